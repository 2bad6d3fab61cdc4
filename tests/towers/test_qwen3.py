"""The static Qwen3-VL tower against HF's Qwen3VLVisionModel: the resampled position table, merged tokens (merger
as the projector), every DeepStack level (its merger applied) and the last block's received attention, on square
and non-square image sizes."""

import math

import pytest
import torch
from transformers import Qwen3VLForConditionalGeneration
from transformers.vision_utils import get_vision_interpolation_indices_and_weights

from vtp_export.checkpoint.load import load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.towers.qwen3 import position_table, unit_order

QWEN3 = MODELS.get("qwen3-vl")
# 224x224: 7x7 merged tokens, the 16x16 position table shrunk; 256x320 and 320x192: stretched, not square.
SIZES = [(224, 224), (256, 320), (320, 192)]


def patch_rows(pixel_values: torch.Tensor, patch: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """One normalised image (1, 3, H, W) -> the Qwen2-VL processor's rows and image_grid_thw for Qwen3-VL's 16-px
    patches (its patchify re-stated: 2x2 merge units in raster order, the still frame repeated along T = 2)."""
    _, channels, height, width = pixel_values.shape
    unit = 2 * patch
    x = pixel_values.reshape(channels, height // unit, 2, patch, width // unit, 2, patch).permute(1, 4, 2, 5, 0, 3, 6)
    x = x.unsqueeze(5).expand(-1, -1, -1, -1, -1, 2, -1, -1)
    return x.reshape(-1, channels * 2 * patch * patch), torch.tensor([[1, height // patch, width // patch]])


def hf_reference(visual, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """HF's merged tokens and DeepStack features of one image, and the attention each merged token receives in the
    last block (its N x N softmax, mean over heads and queries, groups of 4 consecutive patches averaged)."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

    captured = {}
    last = visual.blocks[-1].attn

    def hook(module, args, kwargs):
        captured.update(hidden=args[0] if args else kwargs["hidden_states"], rope=kwargs["position_embeddings"])

    handle = last.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        output = visual(*patch_rows(pixel_values))
    finally:
        handle.remove()
    hidden = captured["hidden"]
    n = hidden.shape[0]
    q, k, _ = last.qkv(hidden).reshape(n, 3, last.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *captured["rope"])
    attention = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1]), dim=-1)
    received = attention.mean(dim=0).mean(dim=0).view(-1, 4).mean(dim=1)
    return output.pooler_output, output.deepstack_features, received


def tower(checkpoint, height: int, width: int, method: str = "holov"):
    config = read_model_config(QWEN3, WeightsFolder(checkpoint))
    stack = load_vision_stack(QWEN3, config, {"image_size": f"{height}x{width}"}, WeightsFolder(checkpoint))
    pruning = METHODS.get(method).create(stack.geometry, None if method == "none" else 8, {})
    return QWEN3.feature_extractor(stack, pruning).eval(), stack, QWEN3.level_projectors(stack)


@pytest.fixture(scope="module")
def hf_visual(qwen3_checkpoint):
    return Qwen3VLForConditionalGeneration.from_pretrained(qwen3_checkpoint).eval().model.visual


@pytest.mark.parametrize("height,width", [*SIZES, (64, 96)])
def test_position_table_is_hfs_interpolation(hf_visual, height, width):
    rows, cols = height // 16, width // 16
    indices, weights = get_vision_interpolation_indices_and_weights(
        torch.tensor([[1, rows, cols]]), num_grid_per_side=hf_visual.num_grid_per_side, mode="bilinear",
        align_corners=True, spatial_merge_size=2)
    expected = (hf_visual.pos_embed(indices) * weights[:, :, None]).sum(1)
    ours = position_table(hf_visual.pos_embed.weight, rows, cols)[torch.tensor(unit_order(rows, cols, 2))]
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("height,width", SIZES)
def test_merged_tokens_levels_and_scores_equal_hf(qwen3_checkpoint, hf_visual, height, width):
    features, stack, levels = tower(qwen3_checkpoint, height, width)
    pixel_values = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = features(pixel_values)
        merged = stack.projector(ours.hidden)
        deepstack = [merger(level) for merger, level in zip(levels, ours.levels)]
        for b in range(pixel_values.shape[0]):
            expected, expected_levels, received = hf_reference(hf_visual, pixel_values[b:b + 1])
            torch.testing.assert_close(merged[b], expected, atol=1e-5, rtol=1e-5)
            assert len(deepstack) == len(expected_levels) == 2
            for level, want in zip(deepstack, expected_levels):
                torch.testing.assert_close(level[b], want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours.received_attention[b], received, atol=1e-9, rtol=1e-6)
    rows, cols = height // 32, width // 32
    assert ours.hidden.shape == (2, rows * cols, 4 * 32) and ours.patches is ours.hidden and not ours.cls_token
    assert all(level.shape == ours.hidden.shape for level in ours.levels)
    assert torch.allclose(ours.received_attention.sum(dim=1), torch.full((2,), 0.25))


def test_scores_only_where_the_method_reads_them(qwen3_checkpoint):
    features, _, _ = tower(qwen3_checkpoint, 224, 224, "none")
    with torch.no_grad():
        ours = features(torch.randn(1, 3, 224, 224))
    assert ours.received_attention is None and len(ours.levels) == 2


def test_scoring_split_is_the_tower(qwen3_checkpoint):
    """scoring_layer(scoring_input(x)) (what verification's screen runs) equals the graph's own path."""
    features, _, _ = tower(qwen3_checkpoint, 256, 320)
    pixel_values = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        whole, split = features(pixel_values), features.scoring_layer(features.scoring_input(pixel_values))
    for a, b in zip([whole.hidden, whole.received_attention, *whole.levels],
                    [split.hidden, split.received_attention, *split.levels]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
