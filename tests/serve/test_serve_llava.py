"""`vtp-export serve` on a tiny LLaVA-1.5 export, from the serving venv, over HTTP on the loopback: greedy ids equal
the transformers backend's (the Pipeline in this venv), streamed or whole; 64 requests 8 at a time each answered
as when alone; bad requests answered 400 in one line with the engine alive; SIGTERM stops it cleanly."""

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.pictures import picture
from tests.serve.server import ServeProcess, chat, data_url, requires_serve_venv
from vtp_export.records.export import read_export
from vtp_export.runtime import Pipeline
from vtp_export.runtime.pipeline import Answer

pytestmark = [pytest.mark.slow, pytest.mark.serve, requires_serve_venv]

QUESTIONS = ["What is in the picture?", "Describe the image.", "Is there a dog?", "What colour is the sky?"]
NEW_TOKENS = 8
MAX_MODEL_LEN = 256  # the prompts are about 105 tokens (64 of them the image's)


@pytest.fixture(scope="module")
def folder(llava_vllm_checkpoint, cached_export, tmp_path_factory):
    """A writable copy of the export (the server writes llm-vllm/ into it on first start)."""
    return cached_export.copy(tmp_path_factory.mktemp("serve-llava") / "llava15-visionzip-k64", "llava15",
                              "visionzip", 64, weights=llava_vllm_checkpoint)


@pytest.fixture(scope="module")
def images_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    return root


@pytest.fixture(scope="module")
def server(folder, images_root, tmp_path_factory):
    process = ServeProcess(folder, tmp_path_factory.mktemp("logs") / "serve.log", "--max-model-len",
                           str(MAX_MODEL_LEN), "--max-images", "2", "--max-image-pixels", "200000", "--image-root",
                           str(images_root))
    yield process
    process.kill()


@pytest.fixture(scope="module")
def reference(server, folder):
    """The transformers backend on the same export: (question, image seed) -> its Answer (greedy)."""
    pipe = Pipeline.from_dir(folder)
    cache = {}

    def answer(question: str, seed: int) -> Answer:
        if (question, seed) not in cache:
            cache[question, seed] = pipe.answer(question, [picture(seed)], max_new_tokens=NEW_TOKENS)
        return cache[question, seed]

    return answer


def test_first_start_writes_the_llm_for_vllm_into_the_folder(server, folder):
    record = read_export(folder)
    assert record.vllm is not None and record.vllm.architecture == "LlavaForConditionalGeneration"
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(record.vllm.files)
    assert record.vllm.n_embd == 64 and record.vllm.n_layer == 2
    assert json.loads((folder / "llm-vllm" / "config.json").read_text())["architectures"] == [record.vllm.architecture]


@pytest.mark.parametrize("seed, question", [(0, QUESTIONS[0]), (1, QUESTIONS[1])])
def test_greedy_ids_equal_the_transformers_backend(server, reference, seed, question):
    reply = server.post(chat([data_url(picture(seed))], question, NEW_TOKENS))
    assert reply.status == 200, reply.text
    choice = reply.body["choices"][0]
    assert choice["token_ids"] == reference(question, seed).token_ids
    assert choice["message"]["content"] == reference(question, seed).text
    assert reply.body["image_tokens"] == [64]
    assert reply.body["usage"]["prompt_tokens"] == reference(question, seed).prompt_tokens


def test_streamed_answer_equals_the_whole_one(server, reference):
    events = server.stream(chat([data_url(picture(2))], QUESTIONS[2], NEW_TOKENS))
    pieces = [event["choices"][0] for event in events if event["choices"]]
    assert pieces[0]["delta"]["role"] == "assistant"
    assert [t for piece in pieces for t in piece.get("token_ids", [])] == reference(QUESTIONS[2], 2).token_ids
    assert "".join(piece["delta"].get("content", "") for piece in pieces) == reference(QUESTIONS[2], 2).text
    assert pieces[-1]["finish_reason"] == "length" and events[-1]["usage"]["completion_tokens"] == NEW_TOKENS


def test_a_local_image_under_the_image_root(server, reference, images_root):
    from PIL import Image

    Image.fromarray(picture(3)).save(images_root / "three.png")
    reply = server.post(chat([str(images_root / "three.png")], QUESTIONS[3], NEW_TOKENS))
    assert reply.status == 200, reply.text
    assert reply.body["choices"][0]["token_ids"] == reference(QUESTIONS[3], 3).token_ids


def test_64_requests_8_at_a_time_each_answered_as_alone(server, reference):
    kinds = [(question, seed) for question in QUESTIONS for seed in (0, 1, 2, 3)][:8]
    requests = [kinds[i % len(kinds)] for i in range(64)]
    expected = {kind: reference(*kind).token_ids for kind in kinds}

    def ask(kind):
        question, seed = kind
        return server.post(chat([data_url(picture(seed))], question, NEW_TOKENS))

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(ask, requests))
    assert [reply.status for reply in replies] == [200] * 64
    assert [reply.body["choices"][0]["token_ids"] for reply in replies] == [expected[kind] for kind in requests]
    assert len({reply.body["id"] for reply in replies}) == 64
    assert server.health() == 200


def bad_requests(images_root):
    picture_url = data_url(picture(0))
    shutil.copyfile(__file__, images_root / "not-an-image.png")
    return {
        "unreadable image": chat(["data:image/png;base64," + "iVBORw0KGgo" + "A" * 41], "What?"),
        "not base64": chat(["data:image/png;base64,@@@"], "What?"),
        "a file that is no image": chat([str(images_root / "not-an-image.png")], "What?"),
        "a path outside the image root": chat([__file__], "What?"),
        "too many images": chat([picture_url] * 3, "What?"),
        "image too large": chat([data_url(picture(0, (600, 400)))], "What?"),
        "over the context": chat([picture_url], "What?", max_tokens=200),
        "max_tokens not a number": chat([picture_url], "What?", max_tokens="many"),
        "two turns": {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        "no messages": {"model": "served"},
        "not JSON": b"{",
    }


def test_bad_requests_are_400_in_one_line_and_the_engine_lives(server, reference, images_root):
    for what, body in bad_requests(images_root).items():
        reply = server.post(body)
        assert reply.status == 400, (what, reply.text)
        message = reply.body["error"]["message"]
        assert message and "\n" not in message and "Traceback" not in message, (what, message)
    assert server.health() == 200
    reply = server.post(chat([data_url(picture(0))], QUESTIONS[0], NEW_TOKENS))
    assert reply.status == 200 and reply.body["choices"][0]["token_ids"] == reference(QUESTIONS[0], 0).token_ids


def test_sigterm_stops_the_server_and_its_engine(server):
    """Last in this file: it stops the module's server."""
    engine = server.descendants()
    assert engine, "vLLM's engine runs in processes of its own"
    assert server.terminate() == 0, server.tail()
    assert "stopped" in server.tail(5)
    deadline = time.monotonic() + 30  # the engine's processes end as the server's shutdown tells them to
    while [pid for pid in engine if is_running(pid)] and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in engine if is_running(pid)], "the engine's processes outlived the server by 30 s"


def is_running(pid: int) -> bool:
    from pathlib import Path

    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
