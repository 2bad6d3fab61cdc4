"""EVS against its re-statement of vLLM's compute_retention_mask (tests/methods/reference.py::evs) on HF's own video
embeddings of the tiny Qwen2.5-VL and Qwen3-VL checkpoints: the same kept tokens in the same order, their embeddings
(and Qwen3-VL's DeepStack levels) within 1e-5; the refusals."""

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

from tests.methods import reference
from tests.towers.test_qwen_video import video_patch_rows
from vtp_export.checkpoint.load import load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.errors import UsageError
from vtp_export.export.graph import VisionGraph
from vtp_export.methods import METHODS
from vtp_export.models import MODELS

FRAMES, HEIGHT, WIDTH = 6, 224, 336  # 3 groups of 8 x 12 = 96 merged tokens


def moving_video(seed: int, frames: int = FRAMES, height: int = HEIGHT, width: int = WIDTH) -> torch.Tensor:
    """(1, F, 3, H, W): a base picture plus per-frame noise, stronger in some places than others, so that the
    dissimilarities spread out (no ties)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(3, height, width, generator=generator)
    motion = torch.rand(1, height, width, generator=generator) * 2
    return torch.stack([base + motion * torch.randn(3, height, width, generator=generator)
                        for _ in range(frames)]).unsqueeze(0)


def graph(model, checkpoint, keep: int, frames: int = FRAMES):
    config = read_model_config(model, WeightsFolder(checkpoint))
    options = {"image_size": f"{HEIGHT}x{WIDTH}" if model.name == "qwen2.5-vl" else "256x320", "frames": str(frames)}
    stack = load_vision_stack(model, config, options, WeightsFolder(checkpoint))
    return VisionGraph(model, stack, METHODS.get("evs").create(stack.geometry, keep, {})), stack.geometry


def video_positions(token_index: torch.Tensor, tokens: int) -> torch.Tensor:
    """token_index group * (M + 1) + position -> the flat position group * M + position - 1 in the video."""
    group, position = token_index // (tokens + 1), token_index % (tokens + 1)
    return group * tokens + position - 1


@pytest.mark.parametrize("keep", [96, 150, 200, 287])
def test_evs_equals_vllm_on_qwen2_5_vl(qwen_checkpoint, keep):
    model = MODELS.get("qwen2.5-vl")
    visual = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_checkpoint).eval().model.visual
    vision, geometry = graph(model, qwen_checkpoint, keep)
    video = moving_video(keep)
    with torch.no_grad():
        embeds, token_index = vision(video)
        rows, grid = video_patch_rows(video[0], 14)
        hf_embeds = visual(rows, grid_thw=grid).pooler_output
    mask = reference.evs(hf_embeds, tuple(grid[0].tolist()), keep)
    kept = video_positions(token_index[0], geometry.num_patches)
    assert kept.tolist() == mask.nonzero()[:, 0].tolist()
    assert kept[:geometry.num_patches].tolist() == list(range(geometry.num_patches)), "the first group whole"
    torch.testing.assert_close(embeds[0], hf_embeds[mask], atol=1e-5, rtol=1e-5)


def test_evs_on_qwen3_vl_keeps_the_deepstack_levels_of_its_tokens(qwen3_checkpoint):
    model = MODELS.get("qwen3-vl")
    visual = Qwen3VLForConditionalGeneration.from_pretrained(qwen3_checkpoint).eval().model.visual
    vision, geometry = graph(model, qwen3_checkpoint, 130, frames=4)  # 2 groups of 8 x 10
    video = moving_video(7, 4, 256, 320)
    with torch.no_grad():
        embeds, token_index, levels = vision(video)
        output = visual(*video_patch_rows(video[0], 16))
    mask = reference.evs(output.pooler_output, (2, 16, 20), 130)
    assert video_positions(token_index[0], geometry.num_patches).tolist() == mask.nonzero()[:, 0].tolist()
    torch.testing.assert_close(embeds[0], output.pooler_output[mask], atol=1e-5, rtol=1e-5)
    for level, hf_level in zip(levels[0], output.deepstack_features, strict=True):
        torch.testing.assert_close(level, hf_level[mask], atol=1e-5, rtol=1e-5)


def test_evs_refuses_still_images_and_budgets_below_the_first_group():
    model = MODELS.get("qwen2.5-vl-tiny")
    config = model.default_config()
    still = model.geometry(config, {"image_size": "224x336"})
    video = model.geometry(config, {"image_size": "224x336", "frames": "6"})
    evs = METHODS.get("evs")
    with pytest.raises(UsageError, match="export with --frames F"):
        evs.create(still, 50, {})
    for keep in (95, 288, None):
        with pytest.raises(UsageError, match=r"use 96\.\.287"):
            evs.create(video, keep, {})
    assert evs.temporal and not METHODS.get("divprune").temporal
