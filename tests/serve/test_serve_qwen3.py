"""`vtp-export serve` on a tiny Qwen3-VL export (DivPrune, 24 of 80 tokens) through vtp-export's vLLM plugin: the kept
tokens at their original M-RoPE positions and their DeepStack levels added after the first decoder layers, so the
greedy ids equal the transformers backend's with position_ids="original", for one image and for two; and they are
neither the answers of the pruned tokens numbered on as text nor those of the embeddings without their levels (the
checkpoint's DeepStack mergers are loud enough for the levels to decide the answer: tests/serve/conftest.py)."""

import pytest

from tests.pictures import picture
from tests.serve.server import ServeProcess, pipeline_ids, requires_serve_venv, served_ids
from vtp_export.records.export import read_export
from vtp_export.runtime import Pipeline
from vtp_export.runtime.llm.protocol import Segment
from vtp_export.serve.served import QWEN3_VL_PLUGIN

pytestmark = [pytest.mark.slow, pytest.mark.serve, requires_serve_venv]

QUESTION = "What is in the picture?"
NEW_TOKENS = 8
SIZE = {"image_size": "256x320"}  # 8 x 10 merged tokens: h and w positions differ
CASES = [(0,), (1,), (3, 4)]  # image seeds of each request


@pytest.fixture(scope="module")
def folder(qwen3_vllm_checkpoint, cached_export, tmp_path_factory):
    return cached_export.copy(tmp_path_factory.mktemp("serve-qwen3") / "qwen3-vl-divprune-k24", "qwen3-vl",
                              "divprune", 24, weights=qwen3_vllm_checkpoint, model_options=SIZE)


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    process = ServeProcess(folder, tmp_path_factory.mktemp("logs") / "serve.log", "--max-model-len", "512")
    yield process
    process.kill()


@pytest.fixture(scope="module")
def answers(server, folder):
    """Per case: the server's ids, and the transformers backend's with original and with sequential positions, and
    with original positions but no DeepStack levels."""
    served = served_ids(server, CASES, QUESTION, NEW_TOKENS)
    references = {}
    for policy in ("original", "sequential"):
        with Pipeline.from_dir(folder, position_ids=policy) as pipe:
            references[policy] = pipeline_ids(pipe, CASES, QUESTION, NEW_TOKENS)
            if policy == "original":
                references["no levels"] = [without_levels(pipe, seeds) for seeds in CASES]
    return served, references


def without_levels(pipe: Pipeline, seeds: tuple[int, ...]) -> list[int]:
    images = [picture(seed) for seed in seeds]
    vision = pipe.encode_images(images, [QUESTION] * len(images))
    segments = pipe.segments(pipe.content(QUESTION, images), vision, range(len(images)))
    assert any(segment.deepstack is not None for segment in segments)
    stripped = [Segment(segment.positions, segment.token_ids, segment.embeds) for segment in segments]
    return pipe.llm.generate([stripped], NEW_TOKENS).token_ids[0]


def test_the_plugin_serves_it(server, folder):
    assert read_export(folder).vllm.architecture == QWEN3_VL_PLUGIN


def test_greedy_ids_equal_the_transformers_backend_at_original_positions(answers):
    served, references = answers
    assert served == references["original"]


def test_positions_decide_the_answer(answers):
    """Numbering the kept tokens on as text answers otherwise, so the equality above is the plugin's positions at
    work."""
    served, references = answers
    assert served != references["sequential"]


def test_the_deepstack_levels_decide_the_answer(answers):
    """Dropping the levels answers otherwise, so the equality above is the levels added where the LLM adds them."""
    served, references = answers
    assert served != references["no levels"]


def test_sigterm_stops_it(server):
    assert server.terminate() == 0, server.tail()
