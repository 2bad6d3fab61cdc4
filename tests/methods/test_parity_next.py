"""Each method on LLaVA-NeXT's AnyRes crops against the eager re-statement of its official NeXT path
(tests/methods/reference_next.py); methods without one: the LLaVA-1.5 method per crop in the default layout."""

import dataclasses

import pytest
import torch

from tests.methods import reference_next as reference
from tests.methods.features import random_features, run_method, tiny_projector
from vtp_export.methods import METHODS
from vtp_export.models import MODELS

NEXT = MODELS.get("llava-next-tiny")
GRIDS = ["2x2", "1x3"]
ATOL, RTOL = 1e-5, 1e-5


def geometry(grid: str):
    return NEXT.geometry(NEXT.default_config(224), {"grid": grid})  # 256 patches per crop


def image_features(grid: str, seed: int = 0, peaked: bool = False):
    """One image's crops as batch rows (base first), one question for all of them."""
    g = geometry(grid)
    features = random_features(g, batch=g.crops, seed=seed, peaked=peaked)
    return g, dataclasses.replace(features, text_embeds=features.text_embeds[:1].expand(g.crops, -1))


def run(name, g, keep, features, **options):
    method = METHODS.get(name)(g, METHODS.get(name).output_tokens(g, keep), **options)
    with torch.no_grad():
        return method, run_method(method, features, tiny_projector())


def projected(features):
    with torch.no_grad():
        return tiny_projector()(features.patches)


def rows_cols(g):
    return g.tile_rows, g.tile_cols


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("per_crop", [1, 16, 64])
def test_fastervlm(grid, per_crop):
    g, features = image_features(grid)
    _, (embeds, index) = run("fastervlm", g, per_crop * g.crops, features)
    tokens, positions = reference.fastervlm_next(features.hidden, features.cls_attention, *rows_cols(g), per_crop)
    assert torch.equal(index[0], positions)
    torch.testing.assert_close(embeds[0], projected_tokens(tokens), atol=ATOL, rtol=RTOL)


def projected_tokens(tokens):
    with torch.no_grad():
        return tiny_projector()(tokens)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("per_crop", [8, 64])
def test_vispruner(grid, per_crop):
    g, features = image_features(grid, seed=1)
    _, (embeds, index) = run("vispruner", g, per_crop * g.crops, features)
    tokens, positions = reference.vispruner_next(features.hidden, features.cls_attention, *rows_cols(g), per_crop)
    assert torch.equal(index[0], positions)
    torch.testing.assert_close(embeds[0], projected_tokens(tokens), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("per_crop", [4, 32])
def test_cdpruner_normalises_relevance_over_the_whole_image(grid, per_crop):
    g, features = image_features(grid, seed=2)
    _, (embeds, index) = run("cdpruner", g, per_crop * g.crops, features)
    tokens, positions = reference.cdpruner_next(projected(features), features.clip_patch_embeds,
                                                features.text_embeds[0], *rows_cols(g), per_crop)
    assert torch.equal(index[0], positions)
    torch.testing.assert_close(embeds[0], tokens.float(), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("per_crop", [64, 128, 20])
def test_visionzip(grid, per_crop):
    g, features = image_features(grid, seed=3)
    method, (embeds, index) = run("visionzip", g, per_crop * g.crops, features)
    assert (method.dominant, method.contextual) == (per_crop - round(per_crop * 10 / 64), round(per_crop * 10 / 64))
    tokens, positions = reference.visionzip_next(features.hidden, features.cls_attention, features.keys,
                                                 *rows_cols(g), method.dominant, method.contextual)
    assert torch.equal(index[0], positions)
    torch.testing.assert_close(embeds[0], projected_tokens(tokens), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("keep,crops", [(320, 16), (64, 16), (160, 7)])
@pytest.mark.parametrize("peaked", [False, True], ids=["spread", "peaked"])
def test_holov_spends_one_budget_over_the_image(grid, keep, crops, peaked):
    g, features = image_features(grid, seed=4, peaked=peaked)
    _, (embeds, index) = run("holov", g, keep, features, crops=crops)
    tokens, positions = reference.holov_next(projected(features), features.cls_attention, *rows_cols(g), keep, crops)
    assert torch.equal(index[0], positions)
    torch.testing.assert_close(embeds[0], tokens, atol=ATOL, rtol=RTOL)


def default_layout(per_crop_embeds, per_crop_index, g):
    """The default NeXT layout of per-crop outputs, in the style of the official spatial merge: the base crop
    as emitted, the tiles' patch tokens in full-grid raster order, then the tokens without a patch source
    (CLS, merged, padding), tile by tile."""
    n, side = g.num_patches, g.grid
    tokens, index = [per_crop_embeds[0]], [per_crop_index[0]]
    placed, rest = [], []
    for tile in range(g.crops - 1):
        for slot, position in enumerate(per_crop_index[tile + 1].tolist()):
            entry = (per_crop_embeds[tile + 1, slot], position + (tile + 1) * (n + 1) if position >= 0 else -1)
            if position >= 1:
                placed.append((reference.global_raster_index(tile, position - 1, g.tile_cols, side), entry))
            else:
                rest.append(entry)
    ordered = [entry for _, entry in sorted(placed, key=lambda item: item[0])] + rest
    tokens.append(torch.stack([t for t, _ in ordered]))
    index.append(torch.tensor([i for _, i in ordered]))
    return torch.cat(tokens), torch.cat(index)


@pytest.mark.parametrize("name", ["prumerge", "prumerge_plus", "divprune", "dart", "trim", "uniform", "random", "none"])
@pytest.mark.parametrize("grid", GRIDS)
def test_methods_without_an_official_next_path_prune_each_crop_in_the_default_layout(name, grid):
    g, features = image_features(grid, seed=5)
    keep = None if name == "none" else 16 * g.crops
    _, (embeds, index) = run(name, g, keep, features)
    single = dataclasses.replace(g, crops=1, tile_rows=0, tile_cols=0)
    _, (per_crop_embeds, per_crop_index) = run(name, single, None if name == "none" else 16, features)
    expected_embeds, expected_index = default_layout(per_crop_embeds, per_crop_index, g)
    assert torch.equal(index[0], expected_index)
    torch.testing.assert_close(embeds[0], expected_embeds, atol=ATOL, rtol=RTOL)


def test_none_is_the_static_anyres_sequence():
    g, features = image_features("2x2")
    _, (_, index) = run("none", g, None, features)
    _, expected = reference.next_sequence(features.patches, g.tile_rows, g.tile_cols)
    assert torch.equal(index[0], expected)
