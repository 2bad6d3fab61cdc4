"""The Qwen family on llama.cpp: tiny Qwen2.5-VL and Qwen3-VL exports with their LLM converted by `vtp-export llm`
(f32 GGUFs of llama.cpp's qwen2vl and qwen3vl) answer with the transformers backend's greedy ids, the kept tokens
at their original M-RoPE positions (four planes per image embedding), Qwen3-VL's DeepStack levels in the input
embedding, CDPruner's prompt embedding from the GGUF's token table; and without torch."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.llm_files import assert_transformers_choices
from tests.pictures import picture
from tests.runtime.hf_reference import exports_on_demand
from tests.runtime.test_video_pipeline import KEEP as VIDEO_KEEP
from tests.runtime.test_video_pipeline import QWEN3, QWEN25, setup, write_video
from tests.runtime.torch_free import answer_without_torch
from vtp_export.errors import PipelineError
from vtp_export.runtime import Pipeline
from vtp_export.runtime.llm.gguf import export_llm
from vtp_export.runtime.llm.protocol import Segment

pytestmark = [pytest.mark.slow, pytest.mark.llama]

pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")

QUESTION = "What is in the picture?"
NEW_TOKENS = 8
KEEP = 24
SIZES = {"qwen2.5-vl": {"image_size": "224x336"}, "qwen3-vl": {"image_size": "256x320"}}  # non-square grids
CASES = [("qwen2.5-vl", method) for method in ("dart", "cdpruner", "none")] + \
        [("qwen3-vl", method) for method in ("divprune", "cdpruner", "none")]


def llama_cpp_norms(reference: Pipeline) -> Pipeline:
    """The transformers reference as llama.cpp computes the model: llama.cpp's qwen2vl (llama-cpp-python 0.3.36's
    vendored llama.cpp) never reads the RMSNorm epsilon from the GGUF and normalises without one, so Qwen2.5-VL's
    reference runs with epsilon 0; everything else is compared exactly (README, LLM on llama.cpp)."""
    if reference.record.model.name == "qwen2.5-vl":
        for module in reference.llm.decoder.modules():
            if hasattr(module, "variance_epsilon"):
                module.variance_epsilon = 0.0
    return reference


@pytest.fixture(scope="module")
def exports(qwen_checkpoint, qwen3_checkpoint, cached_export, tmp_path_factory):
    """(model, method) -> a copy of its tiny export (keep 24) with an f32 GGUF of its LLM written into it."""
    root = tmp_path_factory.mktemp("qwen-llama-cpp")
    checkpoints = {"qwen2.5-vl": qwen_checkpoint, "qwen3-vl": qwen3_checkpoint}

    def exported(model: str, method: str) -> Path:
        out = root / f"{model}-{method}"
        if not out.exists():
            source = exports_on_demand(cached_export, model, checkpoints[model], KEEP, model_options=SIZES[model])
            shutil.copytree(source(method), out)
            out.chmod(0o755)
            export_llm(out, "f32")
        return out

    return exported


@pytest.mark.parametrize("model,method", CASES)
def test_greedy_ids_equal_the_transformers_backend(model, method, exports):
    """Same vision graph, same prompt ids and positions; the llama.cpp LLM's greedy ids under the tie rule (f32:
    equal, and no step's top two transformers logits within 2e-5)."""
    folder = exports(model, method)
    with llama_cpp_norms(Pipeline.from_dir(folder, backend="onnxruntime")) as reference, \
            Pipeline.from_dir(folder, backend="onnxruntime", llm_backend="llama.cpp") as pipe:
        expected = reference.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS)
        answer = pipe.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS)
        content = reference.content(QUESTION, [picture()])
        prompt_embeds = reference.prompt_embeds([content]) if method == "cdpruner" else None
        vision = reference.encode_images([picture()], [QUESTION], prompt_embeds)
        segments = reference.segments(content, vision, range(1))
        ours = pipe.segments(content, vision, range(1))
        assert [s.token_ids is None or s.token_ids.tolist() for s in ours] == \
               [s.token_ids is None or s.token_ids.tolist() for s in segments], "the tokenizers agree"
        if method == "cdpruner":  # the prompt embedding the graph prunes by, from the GGUF's token table
            np.testing.assert_allclose(pipe.prompt_embeds([content]), prompt_embeds, rtol=1e-6, atol=1e-7)
        assert_transformers_choices(reference.llm, segments, answer.token_ids, "f32", expected.token_ids)
    assert (answer.llm_backend, answer.position_ids) == ("llama.cpp", "original")
    assert (answer.prompt_tokens, answer.image_tokens) == (expected.prompt_tokens, expected.image_tokens)


def test_positions_decide_the_answer_on_llama_cpp(exports):
    """The planes reach llama.cpp's rope: the sequential policy (each kept token at a position of its own on every
    plane) answers as the transformers backend does with it (tie rule), and differently from original positions."""
    folder = exports("qwen2.5-vl", "none")
    answers = {}
    for policy in ("original", "sequential"):
        with llama_cpp_norms(Pipeline.from_dir(folder, backend="onnxruntime", position_ids=policy)) as reference, \
                Pipeline.from_dir(folder, backend="onnxruntime", llm_backend="llama.cpp", position_ids=policy) as pipe:
            answers[policy] = pipe.answer(QUESTION, [picture(2)], max_new_tokens=NEW_TOKENS).token_ids
            content = reference.content(QUESTION, [picture(2)])
            segments = reference.segments(content, reference.encode_images([picture(2)], [QUESTION]), range(1))
            assert_transformers_choices(reference.llm, segments, answers[policy], "f32")
    assert answers["original"] != answers["sequential"]


def test_holov_order_runs_sequential_and_is_refused_at_original_positions(exports):
    """HoloV keeps each chunk's tokens by attention and pads with zero tokens at the last kept token's position;
    llama.cpp masks M-RoPE image tokens by position, not by their place in the sequence, so at original positions
    it cannot give them HF's causal mask: one line naming the ways out. Sequential positions answer as the
    transformers backend does."""
    folder = exports("qwen2.5-vl", "holov")
    with Pipeline.from_dir(folder, backend="onnxruntime", llm_backend="llama.cpp") as pipe:
        with pytest.raises(PipelineError) as error:
            pipe.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS)
    message = str(error.value)
    assert "image tokens out of raster order or sharing a position" in message and "\n" not in message
    assert "use position_ids='sequential' or the transformers LLM backend" in message
    sequential = {"backend": "onnxruntime", "position_ids": "sequential"}
    with llama_cpp_norms(Pipeline.from_dir(folder, **sequential)) as reference, \
            Pipeline.from_dir(folder, llm_backend="llama.cpp", **sequential) as pipe:
        assert pipe.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS).token_ids == \
               reference.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS).token_ids


@pytest.mark.parametrize("case,message", [
    ("shuffled", "image tokens out of raster order or sharing a position"),
    ("text_behind", "text tokens need a t of their own each"),
    ("two_planes", "this LLM takes (3, T) M-RoPE positions"),
    ("no_levels", "image embeddings with 0 DeepStack levels; this LLM takes 2"),
])
def test_positions_llama_cpp_cannot_mask_as_hf_are_one_line(case, message, exports):
    folder = exports("qwen3-vl", "none")
    with Pipeline.from_dir(folder, backend="onnxruntime", llm_backend="llama.cpp") as pipe:
        content = pipe.content(QUESTION, [picture()])
        segments = pipe.segments(content, pipe.encode_images([picture()], [QUESTION]), range(1))
        text, image, after = segments
        if case == "shuffled":
            image = Segment(image.positions[:, ::-1].copy(), embeds=image.embeds, deepstack=image.deepstack)
        elif case == "text_behind":
            after = Segment(after.positions - 50, token_ids=after.token_ids)
        elif case == "two_planes":
            image = Segment(image.positions[:2], embeds=image.embeds, deepstack=image.deepstack)
        else:
            image = Segment(image.positions, embeds=image.embeds)
        with pytest.raises(PipelineError) as error:
            pipe.llm.generate([[text, image, after]], NEW_TOKENS)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_gguf_without_the_exports_deepstack_levels_is_one_line(exports):
    gguf = exports("qwen2.5-vl", "none") / "llm-f32.gguf"
    with pytest.raises(PipelineError) as error:
        Pipeline.from_dir(exports("qwen3-vl", "none"), backend="onnxruntime", llm_backend="llama.cpp", llm=gguf)
    message = str(error.value)
    assert "the LLM takes 0 DeepStack levels with its image embeddings; the export's vision graph gives 2" in message
    assert "\n" not in message


def test_qwen3_vl_runs_without_torch(exports, tmp_path):
    """Qwen3-VL with CDPruner (prompt embedding from the GGUF, DeepStack, M-RoPE) on onnxruntime + llama.cpp in an
    environment whose site-packages lack torch answers as it does here."""
    folder = exports("qwen3-vl", "cdpruner")
    result = answer_without_torch(folder, QUESTION, NEW_TOKENS, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    with Pipeline.from_dir(folder, llm_backend="llama.cpp", backend="onnxruntime") as pipe:
        assert result.stdout.strip() == str(pipe.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS).token_ids)


@pytest.mark.parametrize("model", ["qwen2.5-vl", "qwen3-vl"])
def test_a_video_answers_as_on_the_transformers_backend(model, qwen_checkpoint, qwen3_checkpoint, cached_export,
                                                        tmp_path):
    """Video on llama.cpp (issue 22): a 4-frame clip pruned by evs (two temporal groups, each at its own t, raster
    order within; Qwen3-VL's per-group timestamped spans with their DeepStack levels) gives the transformers
    backend's greedy ids."""
    checkpoint = {"qwen2.5-vl": qwen_checkpoint, "qwen3-vl": qwen3_checkpoint}[model]
    options = setup(QWEN25 if model == "qwen2.5-vl" else QWEN3, checkpoint)[2]
    source = cached_export(model, "evs", VIDEO_KEEP["evs"], "cpu", weights=checkpoint, verify_samples=1,
                           model_options=options)
    folder = tmp_path / "export"
    shutil.copytree(source, folder)
    folder.chmod(0o755)
    export_llm(folder, "f32")
    clip = tmp_path / "clip.mp4"
    write_video(clip, 1)
    with llama_cpp_norms(Pipeline.from_dir(folder, backend="onnxruntime")) as reference, \
            Pipeline.from_dir(folder, backend="onnxruntime", llm_backend="llama.cpp") as pipe:
        expected = reference.answer(QUESTION, [clip], max_new_tokens=NEW_TOKENS)
        answer = pipe.answer(QUESTION, [clip], max_new_tokens=NEW_TOKENS)
    assert (answer.token_ids, answer.image_tokens) == (expected.token_ids, expected.image_tokens)
