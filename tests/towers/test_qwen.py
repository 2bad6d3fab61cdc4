"""The static Qwen2.5-VL tower against HF's: window layout, merged tokens (merger as the projector) and the
last block's received attention, on square, non-square and padded image sizes."""

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.vision_utils import get_vision_window_index

from tests.methods import reference
from vtp_export.checkpoint.load import load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.towers.qwen import window_layout

QWEN = MODELS.get("qwen2.5-vl")
# 448x448: 4x4 windows, no padding; 224x336: 2x3 windows; 392x280: 14x10 units, partial windows at the edges.
SIZES = [(448, 448), (224, 336), (392, 280)]


def hf_reference(visual, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's merged tokens of one image and HoloV's official scores of them, put in raster order."""
    merged, window_scores, window_index = reference.holov_qwen_scores(visual, *reference.qwen_patch_rows(pixel_values))
    return merged, torch.empty_like(window_scores).index_copy_(0, window_index, window_scores)


@pytest.mark.parametrize("height,width", [*SIZES, (112, 56), (56, 56), (840, 588)])
def test_layout_is_hf_window_order(height, width):
    grid = torch.tensor([[1, height // 14, width // 14]])
    window_index, cu = get_vision_window_index(grid, spatial_merge_size=2, window_size=112, patch_size=14)
    layout = window_layout(height, width, 14, 2, 112)
    assert layout.window_index == window_index.tolist()
    real_per_window = [sum(p >= 0 for p in layout.slot_patch[w * 64:(w + 1) * 64]) for w in range(layout.windows)]
    assert [0, *torch.tensor([n for n in real_per_window if n]).cumsum(0).tolist()] == cu.tolist()
    assert layout.has_pad == bool((height // 28) % 4 or (width // 28) % 4)


def tower(checkpoint, height: int, width: int, config=None):
    config = config or read_model_config(QWEN, WeightsFolder(checkpoint))
    stack = load_vision_stack(QWEN, config, {"image_size": f"{height}x{width}"}, WeightsFolder(checkpoint))
    method = METHODS.get("holov").create(stack.geometry, 8, {})
    return QWEN.feature_extractor(stack, method).eval(), stack.projector


def assert_matches_hf(visual, features, projector, pixel_values):
    with torch.no_grad():
        ours = features(pixel_values)
        merged = projector(ours.hidden)
        for b in range(pixel_values.shape[0]):
            expected, received = hf_reference(visual, pixel_values[b:b + 1])
            torch.testing.assert_close(merged[b], expected, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(ours.received_attention[b], received, atol=1e-9, rtol=1e-6)
    assert ours.received_attention.dtype == torch.float32 and not ours.cls_token
    assert torch.allclose(ours.received_attention.sum(dim=1), torch.full((pixel_values.shape[0],), 0.25))


@pytest.fixture(scope="module")
def hf_visual(qwen_checkpoint):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_checkpoint).eval().model.visual


@pytest.mark.parametrize("height,width", SIZES)
def test_merged_tokens_and_scores_equal_hf(qwen_checkpoint, hf_visual, height, width):
    features, projector = tower(qwen_checkpoint, height, width)
    torch.manual_seed(1)
    assert_matches_hf(hf_visual, features, projector, torch.randn(2, 3, height, width))


def test_a_windowed_last_block(qwen_checkpoint, tmp_path):
    """Real checkpoints end with a full-attention block; a windowed one scores within its window."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_checkpoint).eval()
    model.config.vision_config.fullatt_block_indexes = [1]
    model.model.visual.config.fullatt_block_indexes = [1]
    model.model.visual.fullatt_block_indexes = [1]
    model.save_pretrained(tmp_path)
    for height, width in [(448, 448), (392, 280)]:
        features, projector = tower(tmp_path, height, width)
        assert [block.groups for block in features.blocks][-1] > 1
        torch.manual_seed(2)
        assert_matches_hf(model.model.visual, features, projector, torch.randn(1, 3, height, width))


def test_features_are_the_mergers_input_in_raster_order(qwen_checkpoint):
    features, projector = tower(qwen_checkpoint, 224, 336)
    with torch.no_grad():
        out = features(torch.randn(1, 3, 224, 336))
    assert out.hidden.shape == (1, 96, 4 * 32) and out.patches is out.hidden
    assert projector(out.hidden).shape == (1, 96, 64)
