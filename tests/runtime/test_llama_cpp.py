"""The llama.cpp backend against the transformers one on llava15-tiny's LLM: the same greedy ids for a prompt
of text, image embeddings and text; several requests at once; sampling; bad input as one PipelineError line
with nothing from llama.cpp on stderr. (The torch-free run is checked with the Pipeline, test_pipeline_llama_cpp.)"""

import sys
from pathlib import Path

import numpy as np
import pytest

from tests.llm_files import TINY, assert_transformers_choices, stand_in_tokenizer_folder, tiny_llm
from vtp_export.errors import PipelineError
from vtp_export.runtime.llm.gguf import write_gguf
from vtp_export.runtime.llm.llama_cpp import LlamaCppLanguageModel
from vtp_export.runtime.llm.protocol import Segment

pytestmark = pytest.mark.llama

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

NEW_TOKENS = 24
IMAGE_SCALE = 10.0  # projected image tokens are larger than text embeddings; here 10x their RMS


@pytest.fixture(scope="module")
def llm():
    model = tiny_llm(initializer_range=0.1)
    model.eos_token_id = None  # transformers makes every token asked for
    return model


@pytest.fixture(scope="module")
def files(llm, tmp_path_factory) -> dict[str, Path]:
    """quant -> GGUF of the tiny LLM with the stand-in tokenizer."""
    root = tmp_path_factory.mktemp("gguf")
    tokenizer = stand_in_tokenizer_folder(root / "tokenizer")
    return {quant: root / write_gguf(llm, tokenizer, root / f"llm-{quant}.gguf", quant).file
            for quant in ("f32", "f16")}


@pytest.fixture(scope="module")
def cpp(files):
    with LlamaCppLanguageModel.from_gguf(files["f32"], n_ctx=512, n_seq_max=2) as model:
        yield never_stops(model)


def prompt(llm, seed: int = 0, question: str = "What is in the picture?", image_tokens: int = 20) -> list[Segment]:
    """USER: <image>\\n{question} ASSISTANT: with random image embeddings, at consecutive positions."""
    before = np.array(llm.tokenizer("USER: ").input_ids)
    after = np.array(llm.tokenizer(f"\n{question} ASSISTANT:", add_special_tokens=False).input_ids)
    scale = IMAGE_SCALE * float(llm.decoder.embed_tokens.weight.detach().pow(2).mean().sqrt())
    image = (np.random.default_rng(seed).standard_normal((image_tokens, 64)) * scale).astype(np.float32)
    a, b = len(before), len(before) + image_tokens
    return [Segment(np.arange(a), token_ids=before), Segment(np.arange(a, b), embeds=image),
            Segment(np.arange(b, b + len(after)), token_ids=after)]


def transformers_ids(llm, segments: list[Segment], new_tokens: int = NEW_TOKENS) -> list[int]:
    return llm.generate([segments], new_tokens).token_ids[0]


def never_stops(model):
    """EOS out of reach, so that llama.cpp makes every token asked for."""
    model.eos_token_id = -1
    return model


@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_greedy_ids_are_transformers(quant, llm, files):
    segments = prompt(llm)
    with LlamaCppLanguageModel.from_gguf(files[quant], n_ctx=256) as model:
        generated = never_stops(model).generate([segments], NEW_TOKENS)
    assert len(generated.token_ids[0]) == NEW_TOKENS
    assert_transformers_choices(llm, segments, generated.token_ids[0], quant)
    assert generated.prompt_tokens == [sum(len(s) for s in segments)]
    assert generated.time_to_first_token_s > 0 and generated.decode_tokens_per_s > 0


def test_the_image_embeddings_steer_the_answer(llm, cpp):
    """Guards the test above: the ids depend on the image segment, so it cannot pass on text alone."""
    first = cpp.generate([prompt(llm, seed=0)], NEW_TOKENS).token_ids[0]
    assert cpp.generate([prompt(llm, seed=1)], NEW_TOKENS).token_ids[0] != first


@pytest.mark.parametrize("case, message", [
    ("jump", "position 583 where 27 comes next; llama.cpp needs consecutive positions on LLaMA models"),
    ("tie", "position 6 where 7 comes next"),
    ("start", "position 3 where 0 comes next"),
    ("m-rope", "positions of shape (3, 7)"),
])
def test_positions_other_than_consecutive_are_refused_in_one_line(case, message, llm, cpp, capfd):
    """llama.cpp refuses a sequence whose positions jump (the `original` policy): one PipelineError."""
    segments = prompt(llm)
    if case == "jump":
        segments[2].positions = segments[2].positions + 556  # text after the image continues past all 576 patches
    elif case == "tie":
        segments[0].positions = np.array([0, 1, 2, 3, 4, 5, 6])
        segments[1].positions = segments[1].positions - 1
    elif case == "start":
        for segment in segments:
            segment.positions = segment.positions + 3
    else:
        segments[0].positions = np.stack([segments[0].positions] * 3)
    with pytest.raises(PipelineError) as error:
        cpp.generate([segments], 4)
    assert_one_line(error, capfd, message)


def test_several_requests_answer_as_each_alone(llm, files):
    """Three requests of different lengths with two sequences: two rounds; each request's ids are those it
    gets alone, and those transformers gives it; tokens stream per request in order."""
    requests = [prompt(llm, 0), prompt(llm, 1, "Describe the image.", 8), prompt(llm, 2, "Two?", 30)]
    streamed: dict[int, list[int]] = {}
    with LlamaCppLanguageModel.from_gguf(files["f32"], n_ctx=512, n_seq_max=2) as model:
        together = never_stops(model).generate(requests, 12, on_token=lambda i, t: streamed.setdefault(i, []).append(t))
        alone = [model.generate([r], 12).token_ids[0] for r in requests]
    assert together.token_ids == alone == [transformers_ids(llm, r, 12) for r in requests]
    assert streamed == dict(enumerate(together.token_ids))
    assert together.prompt_tokens == [sum(len(s) for s in r) for r in requests]


def test_requests_beyond_the_context_run_in_rounds(llm, files):
    """Two requests that do not fit the cells together still answer as each alone."""
    requests = [prompt(llm, 0, image_tokens=100), prompt(llm, 1, image_tokens=100)]
    with LlamaCppLanguageModel.from_gguf(files["f32"], n_ctx=256, n_seq_max=4) as model:
        assert model.context_length == 256
        assert list(model.rounds([126, 126], 12)) == [[0], [1]]
        together = never_stops(model).generate(requests, 12)
        assert together.token_ids == [model.generate([r], 12).token_ids[0] for r in requests]


def test_empty_text_segments_between_images(llm, cpp):
    """Two images back to back (`<image><image>`) leave an empty text segment between them."""
    first, image, after = prompt(llm)
    half = len(first) + 10
    split = [first, Segment(image.positions[:10], embeds=image.embeds[:10]),
             Segment(np.arange(half, half), token_ids=np.zeros(0, np.int64)),
             Segment(image.positions[10:], embeds=image.embeds[10:]), after]
    assert cpp.generate([split], 6).token_ids == cpp.generate([prompt(llm)], 6).token_ids


def test_generation_stops_at_eos(llm, files):
    with LlamaCppLanguageModel.from_gguf(files["f32"], n_ctx=256) as model:
        first = never_stops(model).generate([prompt(llm)], 3).token_ids[0][0]
        model.eos_token_id = first  # the model's first answer token now ends it
        generated = model.generate([prompt(llm), prompt(llm, 5)], 8)
    other = generated.token_ids[1]
    assert generated.token_ids[0] == [first]
    assert first not in other[:-1] and (len(other) == 8 or other[-1] == first)


def test_sampling_is_seeded(llm, cpp):
    sample = lambda seed: cpp.generate([prompt(llm)], 16, temperature=1.5, seed=seed).token_ids[0]  # noqa: E731
    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    assert sample(7) != cpp.generate([prompt(llm)], 16).token_ids[0]


def test_tokenizer_matches_the_checkpoints(cpp):
    tokenizer = TINY.stand_in_tokenizer(TINY.default_config())
    text = "USER: <image>\nWhat is in the picture? ASSISTANT: héllo 日本 🙂"
    assert cpp.tokenize(text) == tokenizer(text).input_ids
    assert cpp.tokenize("abc", add_bos=False) == tokenizer("abc", add_special_tokens=False).input_ids
    ids = tokenizer(" a red car. 🙂", add_special_tokens=False).input_ids + [2]
    assert cpp.decode(ids) == tokenizer.decode(ids, skip_special_tokens=True)


def assert_one_line(error: pytest.ExceptionInfo, capfd, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message and all(part in message for part in parts), message
    assert capfd.readouterr().err == ""


def test_missing_gguf(tmp_path, capfd):
    with pytest.raises(PipelineError) as error:
        LlamaCppLanguageModel.from_gguf(tmp_path / "llm-f16.gguf")
    assert_one_line(error, capfd, "no GGUF file at", "vtp-export llm DIR --format gguf")


@pytest.mark.parametrize("damage", ["truncated", "not-gguf"])
def test_damaged_gguf(damage, files, tmp_path, capfd):
    data = files["f16"].read_bytes()
    broken = tmp_path / "llm-f16.gguf"
    broken.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a gguf file at all" * 100)
    with pytest.raises(PipelineError) as error:
        LlamaCppLanguageModel.from_gguf(broken)
    assert_one_line(error, capfd, f"llama.cpp cannot load {broken}: ")


def test_llama_cpp_python_not_installed(files, monkeypatch, capfd):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(PipelineError) as error:
        LlamaCppLanguageModel.from_gguf(files["f16"])
    assert_one_line(error, capfd, "the llama.cpp backend needs llama-cpp-python (pip install 'vtp-export[llama]')")


@pytest.mark.parametrize("case, message", [
    ("both", "a segment has to hold either token_ids or embeds"),
    ("width", "image embeddings of shape (20, 32); the LLM takes (T, 64)"),
    ("positions", "a segment of 7 tokens has 6 positions"),
    ("token", "token ids outside the vocabulary of 32064"),
    ("long", "exceeds the llama.cpp context of 512"),
    ("new", "max_new_tokens=0 must be at least 1"),
    ("none", "no requests to generate for"),
])
def test_bad_requests(case, message, llm, cpp, capfd):
    requests, new_tokens = [prompt(llm)], 4
    segments = requests[0]
    if case == "both":
        segments[0].embeds = np.zeros((len(segments[0]), 64), np.float32)
    elif case == "width":
        segments[1].embeds = segments[1].embeds[:, :32]
    elif case == "positions":
        segments[0].positions = segments[0].positions[:-1]
    elif case == "token":
        segments[2].token_ids = segments[2].token_ids + 40000
    elif case == "long":
        new_tokens = 500
    elif case == "new":
        new_tokens = 0
    else:
        requests = []
    with pytest.raises(PipelineError) as error:
        cpp.generate(requests, new_tokens)
    assert_one_line(error, capfd, message)


def test_closed_model_refuses(files):
    model = LlamaCppLanguageModel.from_gguf(files["f32"], n_ctx=64)
    model.close()
    model.close()  # twice is fine
    with pytest.raises(PipelineError, match="closed"):
        model.generate([[Segment(np.arange(2), token_ids=np.array([1, 5]))]], 2)
