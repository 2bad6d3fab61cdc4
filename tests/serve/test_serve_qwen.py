"""`vtp-export serve` on a tiny Qwen2.5-VL export (HoloV, 24 of 96 tokens: its padding slots too) through
vtp-export's vLLM plugin: the kept tokens at their original M-RoPE positions, so the greedy ids equal the transformers
backend's with position_ids="original" (HF's get_rope_index of the unpruned prompt, gathered), for one image and for
two; and they are not the answers of the pruned tokens numbered on as text."""

import pytest

from tests.serve.server import ServeProcess, pipeline_ids, requires_serve_venv, served_ids
from vtp_export.records.export import read_export
from vtp_export.runtime import Pipeline
from vtp_export.serve.served import QWEN2_5_VL_PLUGIN

pytestmark = [pytest.mark.slow, pytest.mark.serve, requires_serve_venv]

QUESTION = "What is in the picture?"
NEW_TOKENS = 8
SIZE = {"image_size": "224x336"}  # 8 x 12 merged tokens: h and w positions differ
CASES = [(0,), (1,), (2,), (3, 4)]  # image seeds of each request


@pytest.fixture(scope="module")
def folder(qwen_vllm_checkpoint, cached_export, tmp_path_factory):
    return cached_export.copy(tmp_path_factory.mktemp("serve-qwen") / "qwen2.5-vl-holov-k24", "qwen2.5-vl", "holov",
                              24, weights=qwen_vllm_checkpoint, model_options=SIZE)


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    process = ServeProcess(folder, tmp_path_factory.mktemp("logs") / "serve.log", "--max-model-len", "512")
    yield process
    process.kill()


@pytest.fixture(scope="module")
def answers(server, folder):
    """Per case: the server's ids, and the transformers backend's with original and with sequential positions."""
    served = served_ids(server, CASES, QUESTION, NEW_TOKENS)
    references = {}
    for policy in ("original", "sequential"):
        with Pipeline.from_dir(folder, position_ids=policy) as pipe:
            references[policy] = pipeline_ids(pipe, CASES, QUESTION, NEW_TOKENS)
    return served, references


def test_the_plugin_serves_it(server, folder):
    assert read_export(folder).vllm.architecture == QWEN2_5_VL_PLUGIN


def test_greedy_ids_equal_the_transformers_backend_at_original_positions(answers):
    served, references = answers
    assert served == references["original"]


def test_positions_decide_the_answer(answers):
    """The tiny checkpoint's weights make positions matter: numbering the kept tokens on as text answers otherwise,
    so the equality above is the plugin's positions at work."""
    served, references = answers
    assert served != references["sequential"]


def test_sigterm_stops_it(server):
    assert server.terminate() == 0, server.tail()
