"""The runtime against HF Qwen2.5-VL on the tiny checkpoint: for every method that applies, the same greedy ids
as Qwen2_5_VLForConditionalGeneration.generate() given the same pruning (the same kept embeddings at the 3-D
positions HF's get_rope_index gives their tokens); `none` equals HF's own generate from pixels."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

from tests.pictures import picture
from tests.runtime.hf_reference import exports_on_demand
from vtp_export.checkpoint.load import load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.export.graph import VisionGraph
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.runtime import Pipeline

pytestmark = pytest.mark.slow

QWEN = MODELS.get("qwen2.5-vl")
SIZE = {"image_size": "224x336"}  # 8 x 12 merged tokens: a non-square grid, so h and w positions differ
TOKENS = 96
KEEP = 24
QUESTION = "What is in the picture?"
NEW_TOKENS = 8
APPLICABLE = [name for name, method in METHODS.items()  # still images: evs (temporal) takes a video
              if not method.for_signals(QWEN.signals).requires - QWEN.signals and not method.temporal]


@pytest.fixture(scope="module")
def hf(qwen_checkpoint):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_checkpoint).eval()


@pytest.fixture(scope="module")
def exports(qwen_checkpoint, cached_export):
    return exports_on_demand(cached_export, "qwen2.5-vl", qwen_checkpoint, KEEP, model_options=SIZE)


def prompt_ids(checkpoint, image_tokens: int) -> torch.Tensor:
    """(1, T) ids of the chat prompt with `image_tokens` <|image_pad|> between <|vision_start|> and <|vision_end|>."""
    content = "<|vision_start|>" + "<|image_pad|>" * image_tokens + "<|vision_end|>" + QUESTION
    prompt = QWEN.prompt(content, read_model_config(QWEN, WeightsFolder(checkpoint)))
    return AutoTokenizer.from_pretrained(checkpoint)(prompt, return_tensors="pt").input_ids


def rope_index(hf, ids: torch.Tensor, geometry) -> torch.Tensor:
    """HF's 3-D positions of the unpruned prompt, (3, 1, T)."""
    image = (ids == hf.config.image_token_id).int()
    grid = torch.tensor([[1, geometry.grid_rows * 2, geometry.grid_cols * 2]])
    return hf.model.get_rope_index(ids, image, image_grid_thw=grid)[0]


def prompt_embedding(hf, ids: torch.Tensor) -> torch.Tensor:
    """(1, D) cdpruner's Qwen text: the mean of HF's input embeddings over the prompt's tokens outside the image span
    (OpenVINO GenAI's instruction tokens: all but <|vision_start|>, <|image_pad|>, <|vision_end|>)."""
    span = torch.tensor([hf.config.vision_start_token_id, hf.config.image_token_id, hf.config.vision_end_token_id])
    text = ids[0][~torch.isin(ids[0], span)]
    return hf.get_input_embeddings()(text).mean(dim=0, keepdim=True)


def hf_ids_with_pruning(hf, checkpoint, method_name: str, image: np.ndarray) -> list[int]:
    """HF's generate() on the prompt whose image span holds the PyTorch pruning's kept embeddings, each at the
    position get_rope_index gives its source token (padding slots at the last image token's)."""
    config = read_model_config(QWEN, WeightsFolder(checkpoint))
    stack = load_vision_stack(QWEN, config, SIZE, WeightsFolder(checkpoint))
    method = METHODS.get(method_name).for_signals(QWEN.signals).create(stack.geometry, KEEP, {})
    pixel_values = torch.from_numpy(QWEN.preprocess([Image.fromarray(image)], stack.geometry))
    ids = prompt_ids(checkpoint, TOKENS)
    start = int((ids[0] == hf.config.image_token_id).nonzero()[0])
    with torch.no_grad():
        text_embeds = prompt_embedding(hf, ids) if method.prompt_conditioned else None
        image_embeds, token_index = VisionGraph(QWEN, stack, method)(pixel_values, text_embeds)
        sources = start + torch.where(token_index[0] >= 1, token_index[0] - 1, TOKENS - 1)
        kept = torch.cat([torch.arange(start), sources, torch.arange(start + TOKENS, ids.shape[1])])
        embed = hf.get_input_embeddings()
        inputs_embeds = torch.cat([embed(ids[0, :start]), image_embeds[0], embed(ids[0, start + TOKENS:])]).unsqueeze(0)
        positions = rope_index(hf, ids, stack.geometry)[:, :, kept]
        generated = hf.generate(inputs_embeds=inputs_embeds, position_ids=positions,
                                attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long),
                                max_new_tokens=NEW_TOKENS, do_sample=False)
    return generated[0].tolist()


def test_the_methods_that_apply():
    assert APPLICABLE == ["cdpruner", "dart", "divprune", "holov", "none", "random", "uniform", "vispruner"]


@pytest.mark.parametrize("method", [m for m in APPLICABLE if m != "none"])
def test_greedy_ids_equal_hf_with_the_same_pruning(method, qwen_checkpoint, hf, exports):
    # VisPruner's kept set legitimately differs between backends (float noise, see its module): it runs the
    # PyTorch backend, so that the pruning is the same and the LLM side is what is compared.
    backend = "onnxruntime" if METHODS.get(method).exact_selection else "torch"
    pipe = Pipeline.from_dir(exports(method), backend=backend)
    answer = pipe.answer(QUESTION, [picture()], max_new_tokens=NEW_TOKENS)
    assert answer.token_ids == hf_ids_with_pruning(hf, qwen_checkpoint, method, picture())
    assert answer.image_tokens == [KEEP] and answer.position_ids == "original"


def test_prompt_embeds_are_hf_input_embeddings_averaged_outside_the_image(qwen_checkpoint, hf, exports):
    """cdpruner's text_embeds: the runtime's mean over the templated prompt (system turn included) equals HF's
    embedding table averaged over the same tokens; the image span's tokens are left out however many pads it has."""
    pipe = Pipeline.from_dir(exports("cdpruner"))
    ours = pipe.prompt_embeds([pipe.content(QUESTION, [picture()])])
    with torch.no_grad():
        reference = prompt_embedding(hf, prompt_ids(qwen_checkpoint, TOKENS))
    assert ours.shape == (1, pipe.geometry.llm_width)
    np.testing.assert_allclose(ours, reference.numpy(), rtol=1e-6, atol=1e-7)


def test_none_equals_unmodified_hf_generate(qwen_checkpoint, hf, exports):
    pipe = Pipeline.from_dir(exports("none"))
    answer = pipe.answer(QUESTION, [picture(1)], max_new_tokens=NEW_TOKENS)
    ids = prompt_ids(qwen_checkpoint, TOKENS)
    resized = Image.fromarray(picture(1)).resize((336, 224), Image.Resampling.BICUBIC)
    pixels = Qwen2VLImageProcessorPil()(resized, return_tensors="pt")  # HF's own processing of the export's size
    with torch.no_grad():
        reference = hf.generate(input_ids=ids, pixel_values=pixels["pixel_values"],
                                image_grid_thw=pixels["image_grid_thw"], mm_token_type_ids=(ids == 151655).int(),
                                max_new_tokens=NEW_TOKENS, do_sample=False)
    assert pixels["image_grid_thw"].tolist() == [[1, 16, 24]]
    assert answer.token_ids == reference[0, ids.shape[1]:].tolist()
    assert answer.image_tokens == [TOKENS] and answer.prompt_tokens == ids.shape[1]


def test_positions_follow_hf_rope_index(qwen_checkpoint, hf, exports):
    """original: kept tokens at HF's (t, h, w) of their source, text resuming after the unpruned image;
    sequential: the kept tokens numbered on, t = h = w."""
    pipe = Pipeline.from_dir(exports("holov"))
    vision = pipe.encode_images([picture()], [QUESTION])
    segments = pipe.segments(QWEN.image_token + QUESTION, vision, range(1))
    ids = prompt_ids(qwen_checkpoint, TOKENS)
    full = rope_index(hf, ids, pipe.geometry)[:, 0]
    start = len(segments[0])
    sources = start + vision["token_index"][0] - 1
    kept = np.concatenate([np.arange(start), sources, np.arange(start + TOKENS, ids.shape[1])])
    assert (np.concatenate([s.positions for s in segments], axis=1) == full[:, kept].numpy()).all()
    assert segments[2].positions[0, 0] == start + 12, "text resumes at the image start + max(8, 12)"
    pipe.position_ids = "sequential"
    positions = np.concatenate([s.positions for s in pipe.segments(QWEN.image_token + QUESTION, vision, range(1))],
                               axis=1)
    assert (positions == np.arange(ids.shape[1] - TOKENS + KEEP)).all()


def test_preprocess_is_hf_processing_at_the_export_size(exports):
    """The graph's pixel_values, patchified as the processor does, are the processor's own rows."""
    pipe = Pipeline.from_dir(exports("none"))
    image = Image.fromarray(picture(2, size=(500, 375)))
    pixels = pipe.preprocess([image, image])
    assert pixels.shape == (2, 3, 224, 336) and pixels.dtype == np.float32
    rows = Qwen2VLImageProcessorPil()(image.resize((336, 224), Image.Resampling.BICUBIC), return_tensors="np")
    patches = pixels[0].reshape(3, 8, 2, 14, 12, 2, 14).transpose(1, 4, 2, 5, 0, 3, 6)  # unit, 2x2, c, py, px
    flat = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], 2, 14, 14)).reshape(384, -1)
    assert np.array_equal(flat, rows["pixel_values"])


def test_batch_and_two_images_in_one_prompt(exports):
    pipe = Pipeline.from_dir(exports("dart"))
    single = [pipe.answer(QUESTION, [picture(s)], max_new_tokens=4).token_ids for s in (3, 4)]
    batch = pipe.answer_batch([(QUESTION, [picture(3)]), (f"{QWEN.image_token}{QWEN.image_token}Compare.",
                                                          [picture(3), picture(4)]), (QUESTION, [picture(4)])],
                              max_new_tokens=4)
    assert batch[0].token_ids == single[0] and batch[2].token_ids == single[1], "left padding changes nothing"
    assert batch[1].image_tokens == [KEEP, KEEP]
