"""Properties every registered method must have, over random inputs and a range of keeps."""

import pytest
import torch

from tests.methods.features import batch_item, random_features, run_method, tiny_geometry, tiny_projector
from vtp_export.errors import UsageError
from vtp_export.methods import METHODS

GEOMETRY = tiny_geometry()
N = GEOMETRY.num_patches
PRUNING = [name for name, method in METHODS.items() if name != "none" and not method.temporal]  # evs: video


# Each method's own limits on keep, and the refusal each gives.
KEEP_LIMITS = {
    ("prumerge", 1): "needs --keep >= 2", ("prumerge_plus", 1): "needs --keep >= 3",
    **{("cdpruner", k): "its kernel has rank <= the LLM width 64" for k in (192, N - 1)},
}
# PruMerge+ appends its spatial lattice to the top-k without de-duplication, as the official code does.
REPEATS_SOURCES = {"prumerge_plus"}


def run(name: str, keep: int | None, seed: int = 0, peaked: bool = False, batch: int = 3):
    method = METHODS.get(name).create(GEOMETRY, keep, {})
    with torch.no_grad():
        return run_method(method, random_features(GEOMETRY, batch=batch, seed=seed, peaked=peaked), tiny_projector())


@pytest.mark.parametrize("name", PRUNING)
@pytest.mark.parametrize("keep", [1, 16, 64, 192, N - 1])
@pytest.mark.parametrize("peaked", [False, True], ids=["spread", "peaked"])
def test_static_shapes_and_valid_indices(name, keep, peaked):
    try:
        embeds, index, *_ = run(name, keep, seed=keep, peaked=peaked)
    except UsageError as error:
        assert KEEP_LIMITS.get((name, keep)) is not None and KEEP_LIMITS[(name, keep)] in str(error), str(error)
        return
    assert (name, keep) not in KEEP_LIMITS, "this keep must be refused"
    assert embeds.shape == (3, keep, GEOMETRY.llm_width) and embeds.dtype == torch.float32
    assert index.shape == (3, keep) and index.dtype == torch.int64
    assert torch.isfinite(embeds).all()
    for row in index:
        real = row[row >= 0]
        assert ((row >= -1) & (row <= N)).all()
        if name not in REPEATS_SOURCES:
            assert len(set(real.tolist())) == len(real), "a source token is used twice"
        assert not (row < 0)[: len(real)].any(), "slots without a single source must sit after every real token"


def test_none_is_every_patch_in_raster_order():
    embeds, index = run("none", None)
    assert embeds.shape == (3, N, GEOMETRY.llm_width)
    assert (index == torch.arange(1, N + 1)).all()


@pytest.mark.parametrize("keep", [1, 64, N - 1])
def test_fastervlm_keeps_patches_in_ascending_order(keep):
    _, index = run("fastervlm", keep)
    assert (index[:, 1:] > index[:, :-1]).all() and (index >= 1).all()


@pytest.mark.parametrize("keep", [2, 64, 192])
def test_visionzip_order_is_cls_then_dominant_ascending_then_contextual(keep):
    method = METHODS.get("visionzip").create(GEOMETRY, keep, {})
    _, index = run("visionzip", keep)
    dominant = index[:, : method.dominant]
    assert (dominant[:, 0] == 0).all()
    assert (dominant[:, 1:] > dominant[:, :-1]).all()
    contextual = index[:, method.dominant:]
    assert (contextual[:, 1:] > contextual[:, :-1]).all(), "targets are taken in remaining-list order"


def test_holov_pads_with_zeros_when_crops_overflow():
    # Attention concentrated in the first crops asks them for more tokens than they hold.
    embeds, index = run("holov", 192, peaked=True)
    assert (index == -1).any() and (embeds[index == -1] == 0).all()


@pytest.mark.parametrize("name", PRUNING)
def test_batch_items_are_independent(name):
    features = random_features(GEOMETRY, batch=3, seed=5)
    method = METHODS.get(name).create(GEOMETRY, 64, {})
    with torch.no_grad():
        embeds, index, *_ = run_method(method, features, tiny_projector())
        embeds_one, index_one, *_ = run_method(method, batch_item(features, 1), tiny_projector())
    assert torch.equal(index[1:2], index_one)
    torch.testing.assert_close(embeds[1:2], embeds_one, atol=1e-5, rtol=1e-5)
