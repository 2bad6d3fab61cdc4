"""Each method against the eager re-statement of its official algorithm (tests/methods/reference.py)."""

import pytest
import torch

from vtp_export.methods import METHODS
from tests.methods import reference
from tests.methods.features import random_features, tiny_geometry, tiny_projector

ATOL, RTOL = 1e-5, 1e-5


def method_output(name, geometry, keep, features, **options):
    method = METHODS.get(name)(geometry, keep, **options)
    with torch.no_grad():
        return method, method(features, tiny_projector())


@pytest.mark.parametrize("image_size", [336, 224])
@pytest.mark.parametrize("keep", [1, 32, 64, 200])
@pytest.mark.parametrize("seed", [0, 1])
def test_fastervlm(image_size, keep, seed):
    geometry = tiny_geometry(image_size)
    features = random_features(geometry, seed=seed)
    _, (embeds, index) = method_output("fastervlm", geometry, keep, features)
    tokens, positions = reference.fastervlm(features.hidden, features.cls_attention, keep)
    assert torch.equal(index, positions)
    with torch.no_grad():
        torch.testing.assert_close(embeds, tiny_projector()(tokens), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("image_size", [336, 224])
@pytest.mark.parametrize("keep,options", [
    (64, {}), (128, {}), (192, {}), (1, {}), (40, {"contextual": 0}), (64, {"dominant": 60}), (20, {"contextual": 19}),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_visionzip(image_size, keep, options, seed):
    geometry = tiny_geometry(image_size)
    features = random_features(geometry, seed=seed)
    method, (embeds, index) = method_output("visionzip", geometry, keep, features, **options)
    tokens, positions = reference.visionzip(
        features.hidden, features.cls_attention, features.keys, method.dominant, method.contextual
    )
    assert torch.equal(index, positions)
    with torch.no_grad():
        torch.testing.assert_close(embeds, tiny_projector()(tokens), atol=ATOL, rtol=RTOL)


def test_visionzip_default_split_is_the_papers():
    geometry = tiny_geometry()
    splits = {keep: (m.dominant, m.contextual) for keep in (64, 128, 192)
              for m in [METHODS.get("visionzip")(geometry, keep)]}
    assert splits == {64: (54, 10), 128: (108, 20), 192: (162, 30)}


@pytest.mark.parametrize("image_size", [336, 224])
@pytest.mark.parametrize("keep,crops", [(64, 16), (128, 16), (192, 16), (5, 16), (64, 7), (64, 1), (250, 16), (50, 100)])
@pytest.mark.parametrize("peaked", [False, True], ids=["spread", "peaked"])
def test_holov(image_size, keep, crops, peaked):
    geometry = tiny_geometry(image_size)
    features = random_features(geometry, seed=keep + crops, peaked=peaked)
    _, (embeds, index) = method_output("holov", geometry, keep, features, crops=crops)
    with torch.no_grad():
        projected = tiny_projector()(features.patches)
    tokens, positions = reference.holov(projected, features.patch_attention(), keep, crops)
    assert torch.equal(index, positions)
    torch.testing.assert_close(embeds, tokens, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("image_size", [336, 224])
@pytest.mark.parametrize("keep", [1, 16, 64, 100])
def test_divprune(image_size, keep):
    geometry = tiny_geometry(image_size)
    features = random_features(geometry, seed=keep)
    _, (embeds, index) = method_output("divprune", geometry, keep, features)
    with torch.no_grad():
        projected = tiny_projector()(features.patches)
    tokens, positions = reference.divprune(projected, keep)
    assert torch.equal(index, positions)
    torch.testing.assert_close(embeds, tokens, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("keep", [1, 10, 64, 100, 575])
def test_uniform_spreads_over_the_grid(keep):
    geometry = tiny_geometry()
    _, (_, index) = method_output("uniform", geometry, keep, random_features(geometry))
    rows, cols = (index[0] - 1) // geometry.grid, (index[0] - 1) % geometry.grid
    assert len(set(index[0].tolist())) == keep
    if keep >= 64:
        assert len(set(rows.tolist())) >= 8 and len(set(cols.tolist())) >= 8
        assert rows.float().mean().sub(11.5).abs() < 2 and cols.float().mean().sub(11.5).abs() < 2


def test_random_is_fixed_by_its_seed():
    geometry = tiny_geometry()
    features = random_features(geometry)
    runs = [method_output("random", geometry, 64, features, seed=s)[1][1] for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert torch.equal(runs[0][0], runs[0][1]), "the kept set does not depend on the image"
