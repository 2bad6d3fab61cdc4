"""`vtp-export serve` on a tiny LLaVA-NeXT export (2x2 AnyRes grid, VisionZip at 160 of 2880 tokens: 32 per crop) on
stock vLLM: the greedy ids equal the transformers backend's, for one image and for two."""

import pytest

from tests.pictures import picture
from tests.serve.server import ServeProcess, chat, data_url, requires_serve_venv
from vtp_export.records.export import read_export
from vtp_export.runtime import Pipeline

pytestmark = [pytest.mark.slow, pytest.mark.serve, requires_serve_venv]

QUESTION = "What is in the picture?"
NEW_TOKENS = 8
CASES = [(0,), (1, 2)]  # image seeds of each request


@pytest.fixture(scope="module")
def folder(llava_next_vllm_checkpoint, cached_export, tmp_path_factory):
    return cached_export.copy(tmp_path_factory.mktemp("serve-next") / "llava-next-visionzip-k160", "llava-next",
                              "visionzip", 160, weights=llava_next_vllm_checkpoint)


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    process = ServeProcess(folder, tmp_path_factory.mktemp("logs") / "serve.log", "--max-model-len", "1024")
    yield process
    process.kill()


def test_greedy_ids_equal_the_transformers_backend(server, folder):
    replies = [server.post(chat([data_url(picture(seed)) for seed in seeds], QUESTION, NEW_TOKENS)) for seeds in CASES]
    assert [reply.status for reply in replies] == [200] * len(CASES), [reply.text for reply in replies]
    assert read_export(folder).vllm.architecture == "LlavaNextForConditionalGeneration"
    with Pipeline.from_dir(folder) as pipe:
        expected = [pipe.answer(QUESTION, [picture(seed) for seed in seeds], max_new_tokens=NEW_TOKENS)
                    for seeds in CASES]
    assert [reply.body["choices"][0]["token_ids"] for reply in replies] == [answer.token_ids for answer in expected]
    assert [reply.body["image_tokens"] for reply in replies] == [answer.image_tokens for answer in expected]


def test_sigterm_stops_it(server):
    assert server.terminate() == 0, server.tail()
