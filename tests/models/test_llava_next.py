"""llava-next: the static AnyRes grid against HF LLaVA-NeXT itself: preprocessing, the crops' features, the
host-side HF layout, prompts and positions."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil

from vtp_export.checkpoint.load import load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.errors import UsageError
from vtp_export.export.graph import VisionGraph
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.models.clip import clip_image_processor_settings

NEXT, TINY = MODELS.get("llava-next"), MODELS.get("llava-next-tiny")


def picture(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def test_geometry_of_the_default_2x2_grid():
    g = NEXT.geometry(NEXT.default_config(), {"grid": "2x2"})
    assert (g.crops, g.tile_rows, g.tile_cols, g.num_patches, g.tokens_per_image) == (5, 2, 2, 576, 2880)


@pytest.mark.parametrize("grid,message", [
    ("3x3", "--grid 3x3 (1008x1008 px) is not one of this checkpoint's image_grid_pinpoints: use one of 1x2, 2x1, "
            "2x2, 3x1, 1x3"),
    ("2by2", "expected two positive integers like 2x2"),
    ("0x2", "expected two positive integers like 2x2"),
])
def test_grids_outside_the_checkpoints_pinpoints_are_refused(grid, message):
    with pytest.raises(UsageError, match=message.replace("(", "\\(").replace(")", "\\)")):
        TINY.geometry(TINY.default_config(), {"grid": grid})


@pytest.mark.parametrize("grid", ["2x2", "1x2"])
@pytest.mark.parametrize("size", [(480, 640), (300, 1000), (672, 672)])
def test_preprocessing_is_hfs_forced_to_the_grid(grid, size):
    g = TINY.geometry(TINY.default_config(), {"grid": grid})
    ours = TINY.preprocess([picture(*size)], g)
    canvas = [[g.tile_rows * 336, g.tile_cols * 336]]
    hf = LlavaNextImageProcessorPil(**clip_image_processor_settings(336), image_grid_pinpoints=canvas)
    assert ours.shape == (1, g.crops, 3, 336, 336)
    np.testing.assert_array_equal(ours, hf([picture(*size)], return_tensors="np")["pixel_values"])


@pytest.fixture(scope="module")
def hf(tiny_next_checkpoint):
    model = LlavaNextForConditionalGeneration.from_pretrained(tiny_next_checkpoint).eval()
    model.config.image_grid_pinpoints = [[672, 672]]  # HF recomputes the crop count from it (see hf_layout)
    return model


@pytest.fixture(scope="module")
def stack(tiny_next_checkpoint):
    source = WeightsFolder(tiny_next_checkpoint)
    return load_vision_stack(NEXT, read_model_config(NEXT, source), {"grid": "2x2"}, source)


@pytest.mark.parametrize("size", [(672, 672), (480, 640), (300, 1000)])
def test_unpruned_graph_with_the_hf_layout_is_hfs_image_features(hf, stack, tiny_next_checkpoint, size):
    """The vision graph's `none` tokens (base, full-grid raster), laid out on the host as HF does (unpad by the
    image's size, image_newline per grid row), equal HF's get_image_features."""
    pixel_values = NEXT.preprocess([picture(*size)], stack.geometry)
    graph = VisionGraph(NEXT, stack, METHODS.get("none").create(stack.geometry, None, {}))
    with torch.no_grad():
        embeds, _ = graph(torch.from_numpy(pixel_values))
        theirs = hf.model.get_image_features(torch.from_numpy(pixel_values), torch.tensor([size])).pooler_output[0]
    newline = hf.model.image_newline.detach().numpy()
    ours = NEXT.hf_layout(embeds[0].numpy(), size, stack.geometry, newline)
    assert ours.shape == tuple(theirs.shape)
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5, rtol=1e-5)


def test_prompt_follows_the_checkpoints_text_model(tiny_next_checkpoint, tmp_path):
    from tests.conftest import save_tiny_llava_next

    vicuna = read_model_config(NEXT, WeightsFolder(tiny_next_checkpoint))
    mistral = read_model_config(NEXT, WeightsFolder(save_tiny_llava_next(tmp_path / "mistral", "mistral")))
    assert NEXT.prompt("<image>\nWhat?", vicuna) == "USER: <image>\nWhat? ASSISTANT:"
    assert NEXT.prompt("<image>\nWhat?", mistral) == "[INST] <image>\nWhat? [/INST]"


def test_original_positions_follow_the_unpruned_static_sequence():
    g = TINY.geometry(TINY.default_config(), {"grid": "2x2"})
    n, side = g.num_patches, g.grid
    # base patch 5; tile 1 (top right) patch 0 -> grid row 0, column 24; tile 2 (bottom left) patch 24 (row 1, col 0)
    token_index = np.array([5, 2 * (n + 1) + 1, 3 * (n + 1) + side + 1, 0, -1])
    positions, after = TINY.image_positions(10, token_index, g, "original")
    last = 10 + g.tokens_per_image - 1
    assert positions.tolist() == [10 + 4, 10 + n + side, 10 + n + (side + 1) * (2 * side), last, last]
    assert after == 10 + g.tokens_per_image
