"""Each method against the eager re-statement of its official algorithm (tests/methods/reference.py)."""

import pytest
import torch

from tests.methods import reference
from tests.methods.features import CLIP_WIDTH, random_features, run_method, tiny_geometry, tiny_projector
from vtp_export.methods import METHODS

ATOL, RTOL = 1e-5, 1e-5


def method_output(name, geometry, keep, features, **options):
    method = METHODS.get(name)(geometry, keep, **options)
    with torch.no_grad():
        return method, run_method(method, features, tiny_projector())


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


def next_layer_features(geometry, seed):
    """Random features plus the next layer's q/k, and the VisionFeatures fields the encoder derives from them."""
    features = random_features(geometry, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    shape = (features.hidden.shape[0], geometry.sequence_length, geometry.vision_width)
    q, k = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    logits = (q[:, :1] @ k.transpose(-1, -2)) * geometry.vision_width ** -0.5
    features.next_cls_attention, features.next_keys = torch.softmax(logits, dim=-1).squeeze(1), k
    return features, q, k


@pytest.mark.parametrize("image_size", [336, 224])
@pytest.mark.parametrize("keep", [2, 33, 64, 145, 200])
def test_prumerge(image_size, keep):
    geometry = tiny_geometry(image_size)
    features, q, k = next_layer_features(geometry, seed=keep)
    _, (embeds, index) = method_output("prumerge", geometry, keep, features)
    tokens, positions = reference.prumerge(features.hidden, q, k, keep - 1)
    assert torch.equal(index, positions)
    with torch.no_grad():
        torch.testing.assert_close(embeds, tiny_projector()(tokens), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("image_size", [336, 224])
@pytest.mark.parametrize("keep", [3, 64, 145, 200])
def test_prumerge_plus(image_size, keep):
    geometry = tiny_geometry(image_size)
    features, q, k = next_layer_features(geometry, seed=keep)
    method, (embeds, index) = method_output("prumerge_plus", geometry, keep, features)
    spatial = (keep - 1) // 2
    tokens, positions = reference.prumerge(features.hidden, q, k, keep - 1 - spatial, method.lattice.tolist())
    assert torch.equal(index, positions)
    with torch.no_grad():
        torch.testing.assert_close(embeds, tiny_projector()(tokens), atol=ATOL, rtol=RTOL)


def test_prumerge_plus_is_the_official_72_72_1_form_at_576_tokens():
    method = METHODS.get("prumerge_plus")(tiny_geometry(336), 145)
    assert method.top == 72 and method.lattice.tolist() == list(range(4, 575, 8))


@pytest.mark.parametrize("image_size", [336, 224])
@pytest.mark.parametrize("keep", [1, 17, 64, 128, 200])
@pytest.mark.parametrize("seed", [0, 1])
def test_vispruner(image_size, keep, seed):
    geometry = tiny_geometry(image_size)
    features = random_features(geometry, seed=seed + keep)
    _, (embeds, index) = method_output("vispruner", geometry, keep, features)
    positions = reference.vispruner(features.patches, features.patch_attention(), keep)
    assert torch.equal(index, positions)
    tokens = torch.stack([features.hidden[b, positions[b]] for b in range(len(positions))])
    with torch.no_grad():
        torch.testing.assert_close(embeds, tiny_projector()(tokens), atol=ATOL, rtol=RTOL)


def text_features(geometry, seed, batch=2):
    """Random features with CLIP patch and text embeddings of a chosen seed."""
    features = random_features(geometry, batch=batch, seed=seed)
    g = torch.Generator().manual_seed(seed + 200)
    features.clip_patch_embeds = torch.randn(batch, geometry.num_patches, CLIP_WIDTH, generator=g)
    features.text_embeds = torch.randn(batch, CLIP_WIDTH, generator=g)
    return features


@pytest.mark.parametrize("image_size", [336, 224])
@pytest.mark.parametrize("keep", [2, 64, 145, 200])
def test_trim_fixed(image_size, keep):
    geometry = tiny_geometry(image_size)
    features = text_features(geometry, seed=keep)
    _, (embeds, index) = method_output("trim", geometry, keep, features, count="fixed")
    tokens, positions = reference.trim(features.patches, features.clip_patch_embeds, features.text_embeds, keep - 1)
    assert torch.equal(index, torch.stack(positions))
    with torch.no_grad():
        torch.testing.assert_close(embeds, tiny_projector()(torch.stack(tokens)), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("image_size", [336, 224])
@pytest.mark.parametrize("spread", [0.5, 2.0, 6.0])
def test_trim_iqr(image_size, spread):
    geometry = tiny_geometry(image_size)
    features = text_features(geometry, seed=int(spread * 10), batch=3)
    features.text_embeds = features.text_embeds * spread  # sharper softmax -> fewer, larger outliers
    slots = geometry.num_patches - 1
    _, (embeds, index, num_valid) = method_output("trim", geometry, slots, features, count="iqr")
    tokens, positions = reference.trim(features.patches, features.clip_patch_embeds, features.text_embeds, None)
    with torch.no_grad():
        for b in range(3):
            valid = int(num_valid[b])
            assert valid == len(positions[b])
            assert torch.equal(index[b, :valid], positions[b]) and (index[b, valid:] == -1).all()
            torch.testing.assert_close(embeds[b, :valid], tiny_projector()(tokens[b]), atol=ATOL, rtol=RTOL)
            assert (embeds[b, valid:] == 0).all()


def test_trim_iqr_caps_the_count_at_the_slots():
    geometry = tiny_geometry()
    features = text_features(geometry, seed=3, batch=1)
    _, (_, positions) = None, reference.trim(features.patches, features.clip_patch_embeds, features.text_embeds, None)
    count = len(positions[0]) - 1
    _, (_, index, num_valid) = method_output("trim", geometry, count // 2 + 1, features, count="iqr")
    assert int(num_valid[0]) == count // 2 + 1 and index[0, -1] == -1


@pytest.mark.parametrize("image_size", [336, 224])
@pytest.mark.parametrize("keep", [1, 16, 48, 64])
def test_cdpruner(image_size, keep):
    geometry = tiny_geometry(image_size)
    features = text_features(geometry, seed=keep)
    _, (embeds, index) = method_output("cdpruner", geometry, keep, features)
    with torch.no_grad():
        projected = tiny_projector()(features.patches)
    tokens, positions = reference.cdpruner(projected, features.clip_patch_embeds, features.text_embeds, keep)
    assert torch.equal(index, positions)
    torch.testing.assert_close(embeds, tokens, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("image_size", [336, 224])
@pytest.mark.parametrize("keep,crops,tau", [(64, 16, 1.0), (128, 16, 0.1), (192, 9, 1.0), (5, 16, 1.0),
                                            (64, 1, 1.0), (250, 36, 0.01)])
@pytest.mark.parametrize("peaked", [False, True], ids=["spread", "peaked"])
def test_holov_paper(image_size, keep, crops, tau, peaked):
    geometry = tiny_geometry(image_size)
    features = random_features(geometry, seed=keep + crops, peaked=peaked)
    _, (embeds, index) = method_output("holov", geometry, keep, features, variant="paper", crops=crops, tau=tau)
    with torch.no_grad():
        projected = tiny_projector()(features.patches)
    tokens, positions = reference.holov_paper(projected, features.patch_attention(), keep, int(crops ** 0.5), tau)
    assert torch.equal(index, positions)
    torch.testing.assert_close(embeds, tokens, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("image_size", [336, 224])
@pytest.mark.parametrize("keep,pivots", [(1, 4), (3, 4), (4, 4), (5, 4), (64, 4), (101, 4), (64, 1), (64, 9),
                                         (250, 4)])
def test_dart(image_size, keep, pivots):
    geometry = tiny_geometry(image_size)
    features = random_features(geometry, seed=keep + pivots)
    _, (embeds, index) = method_output("dart", geometry, keep, features, pivots=pivots)
    with torch.no_grad():
        projected = tiny_projector()(features.patches)
    tokens, positions = reference.dart(projected, keep, pivots)
    assert torch.equal(index, positions)
    torch.testing.assert_close(embeds, tokens, atol=ATOL, rtol=RTOL)
