"""Video exports of the Qwen models (--frames F): the geometry (F / 2 temporal groups as crops), per-group budgets
laid out group after group (a video whose two frames per group are the same picture gives, group by group, what the
still-image graph gives that picture at K / G), token_index group * (M + 1) + position, DeepStack levels in the same
slots, and the per-image methods' layout."""

import pytest
import torch

from vtp_export.checkpoint.load import load_vision_stack
from vtp_export.contract import RandomWeights
from vtp_export.errors import UsageError
from vtp_export.export.graph import VisionGraph
from vtp_export.methods import METHODS
from vtp_export.models import MODELS

SIZES = {"qwen2.5-vl-tiny": "224x336", "qwen3-vl-tiny": "256x320"}
GROUPS, KEEP = 3, 24  # 6 frames; 8 tokens per group
# Spatial methods, one budget per group. Not here: evs and holov spend one budget over the video (per-image, below);
# cdpruner's relevance is min-max normalised over the whole video, as over all crops of an AnyRes image.
PER_GROUP = ["dart", "divprune", "none", "random", "uniform", "vispruner"]


def graph(model_name: str, method: str, keep: int | None, frames: int = 0) -> VisionGraph:
    model = MODELS.get(model_name)
    options = {"image_size": SIZES[model_name], "frames": str(frames)}
    stack = load_vision_stack(model, model.default_config(), options, RandomWeights(0))
    return VisionGraph(model, stack, METHODS.get(method).create(stack.geometry, keep, {})).eval()


def test_geometry_of_a_video_export():
    model = MODELS.get("qwen2.5-vl")
    geometry = model.geometry(model.default_config(), {"frames": "8"})
    assert (geometry.frames, geometry.crops, geometry.num_patches, geometry.tokens_per_image) == (8, 4, 256, 1024)
    assert model.geometry(model.default_config(), {}).frames == 0
    with pytest.raises(UsageError, match="--keep 250 is not a multiple of the 4 temporal groups .* use 248 or 252"):
        METHODS.get("divprune").create(geometry, 250, {})


@pytest.mark.parametrize("model_name", list(SIZES))
@pytest.mark.parametrize("method", PER_GROUP)
def test_each_group_keeps_what_the_still_graph_keeps_of_its_picture(model_name, method):
    keep = None if method == "none" else KEEP
    video_graph = graph(model_name, method, keep, frames=2 * GROUPS)
    still_graph = graph(model_name, method, None if keep is None else keep // GROUPS)
    torch.manual_seed(0)
    pictures = torch.randn(2, GROUPS, 3, *map(int, SIZES[model_name].split("x")))
    video = pictures.repeat_interleave(2, dim=1)  # frames 2g and 2g + 1: picture g
    with torch.no_grad():
        ours = video_graph(video)
        still = still_graph(pictures.flatten(0, 1))
    groups, tokens = video_graph.prune.layout.groups, video_graph.prune.layout.tokens
    per_group = ours[1].shape[1] // groups
    expected_index = still[1].reshape(2, groups, per_group) + torch.arange(groups).view(1, groups, 1) * (tokens + 1)
    assert torch.equal(ours[1], expected_index.flatten(1))
    torch.testing.assert_close(ours[0], still[0].reshape(2, groups * per_group, -1), atol=1e-5, rtol=1e-5)
    if len(ours) == 3:  # Qwen3-VL's DeepStack levels: same slots, group after group
        levels = still[2].reshape(2, groups, *still[2].shape[1:]).transpose(1, 2).flatten(2, 3)
        torch.testing.assert_close(ours[2], levels, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method,keep", [("holov", 40), ("evs", 150)])
def test_per_video_methods_number_tokens_by_group_and_position(method, keep):
    video_graph = graph("qwen3-vl-tiny", method, keep, frames=2 * GROUPS)
    torch.manual_seed(1)
    with torch.no_grad():
        embeds, token_index, levels = video_graph(torch.randn(1, 2 * GROUPS, 3, 256, 320))
    tokens = 80
    real = token_index[0][token_index[0] >= 0]
    group, position = real // (tokens + 1), real % (tokens + 1)
    assert embeds.shape[1] == keep and levels.shape[2] == keep
    assert group.min() >= 0 and group.max() < GROUPS and position.min() >= 1 and position.max() <= tokens
    flat = group * tokens + position - 1
    assert len(set(flat.tolist())) == len(flat), "each source token once"
