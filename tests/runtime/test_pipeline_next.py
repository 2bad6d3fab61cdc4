"""The runtime on llava-next-tiny against HF LlavaNextForConditionalGeneration: the same greedy ids for every
method with the same pruning applied in PyTorch, and the unpruned model in HF's layout equal to unmodified HF
generate from pixels."""

import pytest
import torch
from transformers import AutoTokenizer, LlavaNextForConditionalGeneration

from tests.pictures import picture
from tests.runtime.hf_reference import exports_on_demand, hf_ids_with_pruning
from vtp_export.errors import PipelineError
from vtp_export.export.job import export
from vtp_export.export.plan import ExportRequest
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.runtime import Pipeline

pytestmark = pytest.mark.slow

NEXT = MODELS.get("llava-next")
QUESTION = "What is in the picture?"
NEW_TOKENS = 6
KEEP = 40  # 8 tokens of each of the 5 crops


@pytest.fixture(scope="module")
def hf(tiny_next_checkpoint):
    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_next_checkpoint).eval()
    model.config.image_grid_pinpoints = [[672, 672]]  # the export's fixed 2x2 grid
    return model


@pytest.fixture(scope="module")
def exports(tiny_next_checkpoint, cached_export):
    return exports_on_demand(cached_export, "llava-next", tiny_next_checkpoint, KEEP)


@pytest.mark.parametrize("method", ["fastervlm", "visionzip", "holov", "cdpruner", "trim", "divprune", "prumerge",
                                    "vispruner", "uniform", "dart"])
def test_greedy_ids_equal_hf_with_the_same_pruning(method, hf, tiny_next_checkpoint, exports):
    backend = "onnxruntime" if METHODS.get(method).exact_selection else "torch"
    with Pipeline.from_dir(exports(method), backend=backend) as pipe:
        answer = pipe.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS)
    assert answer.image_tokens == [KEEP]
    assert answer.token_ids == hf_ids_with_pruning(hf, NEXT, tiny_next_checkpoint, method, KEEP, picture(), QUESTION,
                                                   NEW_TOKENS)


@pytest.mark.parametrize("size", [(300, 240), (336, 336)])
def test_unpruned_in_hfs_layout_equals_unmodified_hf_generate(hf, tiny_next_checkpoint, exports, size):
    image = picture(1, size)
    with Pipeline.from_dir(exports("none"), layout="hf") as pipe:
        answer = pipe.answer(QUESTION, [image], max_new_tokens=NEW_TOKENS)
        pixel_values = torch.from_numpy(pipe.preprocess([image]))
    image_sizes = torch.tensor([[size[1], size[0]]])
    with torch.no_grad():
        features = hf.model.get_image_features(pixel_values, image_sizes).pooler_output[0]
        tokenizer = AutoTokenizer.from_pretrained(tiny_next_checkpoint)
        prompt = NEXT.prompt("<image>" * len(features) + "\n" + QUESTION, hf.config)
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        reference = hf.generate(input_ids=ids, pixel_values=pixel_values, image_sizes=image_sizes,
                                max_new_tokens=NEW_TOKENS, do_sample=False)
    assert answer.image_tokens == [len(features)] and len(features) != 5 * 576
    assert answer.token_ids == reference[0, ids.shape[1]:].tolist()


def test_hf_layout_is_only_for_the_unpruned_anyres_model(exports, cached_export):
    with pytest.raises(PipelineError, match="layout='hf' lays out the unpruned tokens"):
        Pipeline.from_dir(exports("fastervlm"), layout="hf")
    random = cached_export("llava-next-tiny", "none", None, "cpu", verify_samples=1)  # a golden export
    with pytest.raises(PipelineError, match="needs the checkpoint's image_newline"):
        Pipeline.from_dir(random, layout="hf")


def test_mistral_layout_uses_its_template(tmp_path):
    from tests.conftest import save_tiny_llava_next

    checkpoint = save_tiny_llava_next(tmp_path / "mistral", "mistral")
    out = export(ExportRequest(model="llava-next", method="fastervlm", keep=KEEP, target="cpu", weights=checkpoint,
                               out=tmp_path / "e", verify_samples=1))
    hf = LlavaNextForConditionalGeneration.from_pretrained(checkpoint).eval()
    with Pipeline.from_dir(out) as pipe:
        answer = pipe.answer(QUESTION, [picture(2)], max_new_tokens=NEW_TOKENS)
    assert answer.token_ids == hf_ids_with_pruning(hf, NEXT, checkpoint, "fastervlm", KEEP, picture(2), QUESTION,
                                                   NEW_TOKENS)
