"""The Pipeline on llama.cpp: llava15-tiny exports with their LLM converted by `vtp-export llm` (f32) answer
with the transformers backend's greedy ids for every kind of method (scores, merging, padding, a text graph,
no pruning); several requests; profile; what it refuses; and a run in an environment without torch."""

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from tests.llm_files import assert_transformers_choices, stand_in_tokenizer_folder, tiny_llm
from tests.pictures import picture
from tests.runtime.torch_free import answer_without_torch
from vtp_export.cli import main
from vtp_export.errors import PipelineError
from vtp_export.models.tokenizer import stand_in_llama_tokenizer
from vtp_export.onnx.names import CONFIG_JSON
from vtp_export.records.codec import write_json
from vtp_export.records.export import read_export
from vtp_export.runtime import Pipeline
from vtp_export.runtime.llm.gguf import export_llm, write_gguf
from vtp_export.runtime.profile import profile_export

pytestmark = [pytest.mark.slow, pytest.mark.llama]

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

QUESTION = "What is in the picture?"
NEW_TOKENS = 8


KEEP = 64


@pytest.fixture(scope="module")
def exports(tmp_path_factory, cached_export):
    """method -> a copy of its golden llava15-tiny export (random weights, keep 64, from the session's export
    cache) with an f32 GGUF written into it (made once per module)."""
    root = tmp_path_factory.mktemp("llama-cpp-exports")

    def exported(method: str) -> Path:
        out = root / method
        if not out.exists():
            cached_export.copy(out, "llava15-tiny", method, None if method == "none" else KEEP, "cpu",
                               verify_samples=1)
            export_llm(out, "f32")
        return out

    return exported


@pytest.mark.parametrize("method", ["fastervlm", "visionzip", "holov", "trim", "none"])
def test_greedy_ids_equal_the_transformers_backend(method, exports):
    """Same vision graph (onnxruntime), same prompt ids; the LLM's greedy ids under the tie rule of
    tests/llm_files.py (f32: equal, with no step's top two transformers logits within 2e-5)."""
    folder = exports(method)
    with Pipeline.from_dir(folder, backend="onnxruntime") as reference, \
            Pipeline.from_dir(folder, backend="onnxruntime", llm_backend="llama.cpp") as pipe:
        expected = reference.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS)
        answer = pipe.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS)
        content = reference.content(QUESTION, [picture()])
        vision = reference.encode_images([picture()], [QUESTION])
        segments = reference.segments(content, vision, range(1))
        ours = pipe.segments(content, vision, range(1))
        assert [s.token_ids is None or s.token_ids.tolist() for s in ours] == \
               [s.token_ids is None or s.token_ids.tolist() for s in segments], "the tokenizers agree"
        assert_transformers_choices(reference.llm, segments, answer.token_ids, "f32", expected.token_ids)
    assert (answer.llm_backend, answer.position_ids) == ("llama.cpp", "sequential")
    assert (answer.prompt_tokens, answer.image_tokens, answer.text) == (expected.prompt_tokens,
                                                                        expected.image_tokens, expected.text)


def test_several_requests_in_rounds_and_streaming(exports):
    """Five prompts (one with two images) on llama.cpp's four sequences: two rounds, each prompt's ids as
    transformers gives them; the streamed text is the answer's."""
    requests = [(QUESTION, [picture(s)]) for s in range(4)] + [("Compare <image> with <image>.",
                                                                 [picture(0), picture(1)])]
    pieces: dict[int, str] = {}
    with Pipeline.from_dir(exports("fastervlm"), llm_backend="llama.cpp") as pipe:
        answers = pipe.answer_batch(requests, max_new_tokens=5,
                                    on_text=lambda b, piece: pieces.update({b: pieces.get(b, "") + piece}))
    with Pipeline.from_dir(exports("fastervlm")) as reference:
        expected = reference.answer_batch(requests, max_new_tokens=5)
    assert [a.token_ids for a in answers] == [a.token_ids for a in expected]
    assert answers[4].image_tokens == [KEEP, KEEP]
    assert pieces == {b: a.text for b, a in enumerate(answers) if a.text}


def test_profile_and_run_on_llama_cpp(exports, tmp_path, capsys):
    folder = exports("fastervlm")
    profile = profile_export(folder, runs=1, warmup=0, new_tokens=2, llm_backend="llama.cpp")
    assert profile.export.llm_backend == "llama.cpp" and profile.llm.source == str(folder / "llm-f32.gguf")
    assert (profile.llm.layers, profile.llm.width, profile.tokens.visual) == (2, 64, KEEP)
    assert profile.stages["prefill"].p50_ms > 0
    from PIL import Image

    Image.fromarray(picture()).save(tmp_path / "picture.png")
    assert main(["run", str(folder), "--image", str(tmp_path / "picture.png"), "--prompt", QUESTION,
                 "--max-new-tokens", "3", "--llm-backend", "llama.cpp"]) == 0
    assert "LLM llama.cpp" in capsys.readouterr().out


@pytest.fixture(scope="module")
def foreign_files(tmp_path_factory) -> dict[str, Path]:
    """GGUFs that do not fit a llava15-tiny export: another width; another vocabulary; a tokenizer without
    <image>."""
    root = tmp_path_factory.mktemp("foreign-gguf")
    tokenizer = stand_in_tokenizer_folder(root / "tokenizer")
    narrow = write_gguf(tiny_llm(hidden_size=32, head_dim=8), tokenizer, root / "narrow.gguf", "f16")
    larger = write_gguf(tiny_llm(vocab_size=32100), tokenizer, root / "larger.gguf", "f16")
    plain = tiny_llm()
    plain.tokenizer = stand_in_llama_tokenizer(32064, {})
    plain.tokenizer.save_pretrained(root / "plain-tokenizer")
    no_image = write_gguf(plain, root / "plain-tokenizer", root / "no-image.gguf", "f16")
    return {"narrow": root / narrow.file, "larger": root / larger.file, "no-image": root / no_image.file}


def refusal(case: str, exports, foreign_files, tmp_path) -> dict:
    if case == "no-gguf":
        folder = tmp_path / "e"
        shutil.copytree(exports("fastervlm"), folder)
        write_json(folder / CONFIG_JSON, dataclasses.replace(read_export(folder), llm=None))
        (folder / "llm-f32.gguf").unlink()
        return {"folder": folder}
    if case == "tampered":
        folder = tmp_path / "e"
        shutil.copytree(exports("fastervlm"), folder)
        with (folder / "llm-f32.gguf").open("r+b") as f:
            f.seek(-4, os.SEEK_END)
            f.write(b"\0\0\0\1")
        return {"folder": folder}
    folder = exports("fastervlm")
    return {"original": {"folder": folder, "position_ids": "original"},
            "layers": {"folder": folder, "llm_layers": 1},
            "narrow": {"folder": folder, "llm": foreign_files["narrow"]},
            "larger": {"folder": folder, "llm": foreign_files["larger"]},
            "no-image": {"folder": folder, "llm": foreign_files["no-image"]}}[case]


@pytest.mark.parametrize("case, message", [
    ("original", "position_ids='original': llama.cpp needs consecutive positions on LLaMA models"),
    ("layers", "a GGUF has the layers it was converted with"),
    ("no-gguf", "has no GGUF of its LLM: write one with vtp-export llm"),
    ("tampered", "does not match the sha256 its config.json records"),
    ("narrow", "the LLM is 32 wide; the export's image embeddings are 64 wide"),
    ("larger", "the LLM has 32100 tokens; the export's GGUF (config.json) has 32064"),
    ("no-image", "its tokenizer has no special token <image>"),
])
def test_what_the_llama_cpp_pipeline_refuses_is_one_line(case, message, exports, foreign_files, tmp_path, capfd):
    arguments = refusal(case, exports, foreign_files, tmp_path)
    with pytest.raises(PipelineError) as error:
        Pipeline.from_dir(arguments.pop("folder"), llm_backend="llama.cpp", **arguments)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert capfd.readouterr().err == ""


def test_pipeline_runs_without_torch(exports, tmp_path):
    """In an environment whose site-packages lack torch (every other entry linked, the project on
    PYTHONPATH), a text-conditioned export answers on onnxruntime + llama.cpp as it does here; nothing is
    printed on stderr (llama.cpp's log is kept)."""
    folder = exports("trim")
    result = answer_without_torch(folder, QUESTION, NEW_TOKENS, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    with Pipeline.from_dir(folder, llm_backend="llama.cpp", backend="onnxruntime") as pipe:
        assert result.stdout.strip() == str(pipe.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS).token_ids)
