"""The static Qwen2.5-VL and Qwen3-VL towers on video (--frames F) against HF's, given the video processor's patch
rows (`pixel_values_videos`, `video_grid_thw`): each temporal group's merged tokens (and Qwen3-VL's DeepStack levels)
within 1e-5, HF attending within each group of two frames."""

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

from vtp_export.checkpoint.load import load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.methods import METHODS
from vtp_export.models import MODELS


def video_patch_rows(video: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One normalised video (F, 3, H, W) -> HF's pixel_values_videos and video_grid_thw: Qwen2VLVideoProcessor's
    patchify re-stated (frames 2g, 2g + 1 form temporal patch g; within it 2x2 merge units in raster order, each row
    (C, T, patch, patch))."""
    frames, channels, height, width = video.shape
    groups, unit = frames // 2, 2 * patch
    x = video.reshape(groups, 2, channels, height // unit, 2, patch, width // unit, 2, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # group, unit row, unit col, row in unit, col in unit, c, t, py, px
    return x.reshape(-1, channels * 2 * patch * patch), torch.tensor([[groups, height // patch, width // patch]])


def tower(model, checkpoint, height: int, width: int, frames: int):
    config = read_model_config(model, WeightsFolder(checkpoint))
    options = {"image_size": f"{height}x{width}", "frames": str(frames)}
    stack = load_vision_stack(model, config, options, WeightsFolder(checkpoint))
    method = METHODS.get("none").create(stack.geometry, None, {})
    return model.feature_extractor(stack, method).eval(), stack, method


@pytest.mark.parametrize("height,width,frames", [(224, 336, 4), (392, 280, 6)])
def test_qwen2_5_vl_video_equals_hf(qwen_checkpoint, height, width, frames):
    model = MODELS.get("qwen2.5-vl")
    visual = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_checkpoint).eval().model.visual
    features, stack, _ = tower(model, qwen_checkpoint, height, width, frames)
    assert stack.geometry.crops == frames // 2 and stack.geometry.frames == frames
    torch.manual_seed(3)
    video = torch.randn(2, frames, 3, height, width)
    with torch.no_grad():
        ours = stack.projector(features(video).hidden)  # (B x groups, M, D)
        for b in range(2):
            expected = visual(*video_patch_rows(video[b], 14)).pooler_output  # groups x M rows, group-major
            torch.testing.assert_close(ours.reshape(2, -1, ours.shape[-1])[b], expected, atol=1e-5, rtol=1e-5)


def test_groups_are_not_the_duplicated_still_frame(qwen_checkpoint):
    """Two different frames in a group give other tokens than either frame repeated: the graph reads both."""
    model = MODELS.get("qwen2.5-vl")
    features, stack, _ = tower(model, qwen_checkpoint, 224, 336, 2)
    torch.manual_seed(4)
    video = torch.randn(1, 2, 3, 224, 336)
    with torch.no_grad():
        pair = features(video).hidden
        still = features(video[:, :1].expand(-1, 2, -1, -1, -1)).hidden
    assert not torch.allclose(pair, still, atol=1e-3)


@pytest.mark.parametrize("height,width,frames", [(256, 320, 4)])
def test_qwen3_vl_video_equals_hf(qwen3_checkpoint, height, width, frames):
    model = MODELS.get("qwen3-vl")
    visual = Qwen3VLForConditionalGeneration.from_pretrained(qwen3_checkpoint).eval().model.visual
    features, stack, _ = tower(model, qwen3_checkpoint, height, width, frames)
    levels = model.level_projectors(stack)
    torch.manual_seed(5)
    video = torch.randn(1, frames, 3, height, width)
    with torch.no_grad():
        out = features(video)
        expected = visual(*video_patch_rows(video[0], 16))
        torch.testing.assert_close(stack.projector(out.hidden).flatten(0, 1), expected.pooler_output,
                                   atol=1e-5, rtol=1e-5)
        for projector, level, hf_level in zip(levels, out.levels, expected.deepstack_features, strict=True):
            torch.testing.assert_close(projector(level).flatten(0, 1), hf_level, atol=1e-5, rtol=1e-5)
