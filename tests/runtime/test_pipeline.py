"""The runtime against HF LLaVA on llava15-tiny: the same greedy ids, for every method, and bad input as
one PipelineError."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, LlavaForConditionalGeneration

from tests.pictures import picture
from tests.runtime.hf_reference import exports_on_demand, hf_ids_with_pruning
from vtp_export.cli import main
from vtp_export.errors import PipelineError
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.onnx.names import NUM_VALID
from vtp_export.runtime import Pipeline

pytestmark = pytest.mark.slow

LLAVA15 = MODELS.get("llava15")
IMAGE_TOKEN = LLAVA15.image_token

QUESTION = "What is in the picture?"
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    """A LLaVA checkpoint with its CLIP model in clip/, so every method (text-conditioned too) exports."""
    return tiny_bundle


@pytest.fixture(scope="module")
def hf(bundle):
    return LlavaForConditionalGeneration.from_pretrained(bundle).eval()


@pytest.fixture(scope="module")
def exports(bundle, cached_export):
    return exports_on_demand(cached_export, "llava15", bundle, 16)


@pytest.mark.parametrize("method", [m for m, method in METHODS.items() if m != "none" and not method.temporal])
def test_greedy_ids_equal_hf_with_the_same_pruning(method, bundle, hf, exports):
    # VisPruner's kept set legitimately differs between backends (float noise, see its module): its
    # runtime runs the PyTorch backend here, so that the pruning is the same and the LLM side is compared.
    backend = "onnxruntime" if METHODS.get(method).exact_selection else "torch"
    pipe = Pipeline.from_dir(exports(method), backend=backend)
    answer = pipe.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS)
    assert answer.token_ids == hf_ids_with_pruning(hf, LLAVA15, bundle, method, 16, picture(), QUESTION, NEW_TOKENS)
    assert answer.backend == backend and answer.time_to_first_token_s > 0


def test_none_equals_unmodified_hf_llava_generate(bundle, hf, exports):
    pipe = Pipeline.from_dir(exports("none"))
    answer = pipe.answer(QUESTION, [picture(1)], max_new_tokens=NEW_TOKENS)
    tokenizer = AutoTokenizer.from_pretrained(bundle)
    prompt = LLAVA15.prompt(IMAGE_TOKEN * 576 + "\n" + QUESTION, hf.config)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    pixel_values = torch.from_numpy(pipe.preprocess([picture(1)]))
    with torch.no_grad():
        reference = hf.generate(input_ids=ids, pixel_values=pixel_values, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert answer.token_ids == reference[0, ids.shape[1]:].tolist()
    assert answer.image_tokens == [576]


def test_backends_agree(exports):
    answers = [Pipeline.from_dir(exports("visionzip"), backend=b).answer(QUESTION, [picture(2)], max_new_tokens=6)
               for b in ("onnxruntime", "torch")]
    assert answers[0].token_ids == answers[1].token_ids and answers[1].backend == "torch"


def test_batch_and_several_images_per_prompt(exports):
    pipe = Pipeline.from_dir(exports("fastervlm"))
    single = [pipe.answer(QUESTION, [picture(s)], max_new_tokens=5).token_ids for s in (3, 4)]
    batch = pipe.answer_batch([(QUESTION, [picture(3)]), ("Compare <image> with <image>.", [picture(3), picture(4)]),
                               (QUESTION, [picture(4)])], max_new_tokens=5)
    assert batch[0].token_ids == single[0] and batch[2].token_ids == single[1], "left padding changes nothing"
    assert batch[1].image_tokens == [16, 16]


def test_position_policies(exports):
    pipe = Pipeline.from_dir(exports("fastervlm"), position_ids="original")
    vision = pipe.encode_images([picture()], [QUESTION])
    text, image, after = pipe.segments(f"{IMAGE_TOKEN}\n{QUESTION}", vision, range(1))
    prefix = len(text)
    assert (image.positions == prefix + vision["token_index"][0] - 1).all()
    assert after.positions[0] == prefix + 576, "text resumes after all N patch positions"
    pipe.position_ids = "sequential"
    positions = np.concatenate([s.positions for s in pipe.segments(f"{IMAGE_TOKEN}\n{QUESTION}", vision, range(1))])
    assert (positions == np.arange(prefix + 16 + len(after))).all()


def test_streaming_and_sampling(exports):
    pipe = Pipeline.from_dir(exports("fastervlm"))
    pieces = []
    greedy = pipe.answer(QUESTION, [picture()], max_new_tokens=6, on_text=lambda b, piece: pieces.append(piece))
    assert "".join(pieces) == greedy.text
    sampled = [pipe.answer(QUESTION, [picture()], max_new_tokens=6, temperature=1.0, seed=s).token_ids for s in (0, 0, 1)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


def test_iqr_trim_feeds_only_the_valid_tokens(bundle, cached_export):
    out = cached_export("llava15", "trim", 300, "cpu", weights=bundle, verify_samples=1,
                        method_options={"count": "iqr"})
    pipe = Pipeline.from_dir(out)
    valid = int(pipe.encode_images([picture()], [QUESTION])[NUM_VALID][0])
    assert pipe.answer(QUESTION, [picture()], max_new_tokens=2).image_tokens == [valid] and valid < 300


@pytest.fixture
def damaged(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.zeros((8, 8), np.float32), mode="F").save(tmp_path / "float.tiff")
    return tmp_path


@pytest.mark.parametrize("call,message", [
    (lambda p, d: p.answer(QUESTION, [d / "missing.png"]), "does not exist"),
    (lambda p, d: p.answer(QUESTION, [d / "broken.png"]), "cannot be read"),
    (lambda p, d: p.answer(QUESTION, [d / "float.tiff"]), "unsupported image mode 'F'"),
    (lambda p, d: p.answer(QUESTION, [np.zeros((4, 4, 3), np.float32)]), "numpy image must be uint8"),
    (lambda p, d: p.answer(QUESTION, [42]), "unsupported image type int"),
    (lambda p, d: p.answer("<image> and <image>", [picture()]), "2 <image> placeholders for 1 image$"),
    (lambda p, d: p.answer(QUESTION, [d]), "is a folder, not an image file"),
    (lambda p, d: p.answer(QUESTION, [np.zeros((1, 2000, 3), np.uint8)]), "aspect ratios beyond 16:1 are refused"),
    (lambda p, d: p.answer(QUESTION, [picture()], temperature=float("nan")), "must be a finite number"),
    (lambda p, d: p.answer_batch([]), "needs at least one"),
    (lambda p, d: p.answer(QUESTION * 400, [picture()]), "exceeds the LLM's context of 2048"),
    (lambda p, d: p.answer(QUESTION, [picture()], max_new_tokens=0), "must be at least 1"),
])
def test_bad_requests_raise_one_error_type(exports, damaged, call, message):
    pipe = Pipeline.from_dir(exports("fastervlm"))
    with pytest.raises(PipelineError, match=message):
        call(pipe, damaged)


def test_bad_folders_and_backends(exports, tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        Pipeline.from_dir(tmp_path / "nowhere")
    with pytest.raises(PipelineError, match="has no engine/ folder"):
        Pipeline.from_dir(exports("fastervlm"), backend="tensorrt")
    with pytest.raises(PipelineError, match="unknown backend 'cuda'"):
        Pipeline.from_dir(exports("fastervlm"), backend="cuda")
    without_text = tmp_path / "trim"
    shutil.copytree(exports("trim"), without_text)
    (without_text / "text.onnx").unlink()
    with pytest.raises(PipelineError, match="lacks text.onnx"):
        Pipeline.from_dir(without_text)


def test_llm_folder_must_fit_the_export(exports, tiny_clip, tmp_path):
    with pytest.raises(PipelineError, match="is not a llava15 checkpoint"):
        Pipeline.from_dir(exports("fastervlm"), llm=tiny_clip)
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "config.json").write_text(LLAVA15.default_config().to_json_string())  # a 4096-wide LLM
    with pytest.raises(PipelineError, match="has an LLM of width 4096, the export's image embeddings are 64 wide"):
        Pipeline.from_dir(exports("fastervlm"), llm=wide)


def test_a_random_llm_too_large_for_memory_is_refused_up_front(monkeypatch, cached_export):
    from vtp_export.runtime.llm import protocol

    out = cached_export("llava15-tiny", "fastervlm", 64, "cpu", verify_samples=1)  # a golden export (random weights)
    monkeypatch.setattr(protocol, "available_memory_bytes", lambda: 1 << 20)
    with pytest.raises(PipelineError, match=r"needs about .* GiB .* --llm-layers"):
        Pipeline.from_dir(out)


def test_pipeline_is_a_context_manager(exports):
    with Pipeline.from_dir(exports("fastervlm")) as pipe:
        assert pipe.answer(QUESTION, [picture()], max_new_tokens=2).token_ids
    assert pipe.backend.sessions == {}


def test_cli_run_streams_the_answer(exports, tmp_path, capsys):
    Image.fromarray(picture()).save(tmp_path / "picture.png")
    assert main(["run", str(exports("fastervlm")), "--image", str(tmp_path / "picture.png"), "--prompt", QUESTION,
                 "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "[vtp-export] " in out and "time to first token" in out and "(16 visual from 1 image)" in out
    assert main(["run", str(exports("fastervlm")), "--image", str(tmp_path / "nope.png"), "--prompt", "x"]) == 2
    assert "vtp-export: error: image" in capsys.readouterr().err
