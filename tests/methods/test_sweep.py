"""Parity sweep: every method with official code, on LLaVA-1.5, LLaVA-NeXT and Qwen2.5-VL towers of drawn shapes
(tests/methods/sweep_towers.py), at drawn keeps across the range (small, about N/3, near N or the kernel's rank),
against the eager re-statements of the official code (tests/methods/reference*.py) fed by HF's own modules.

The method runs on the exported graph's feature code (vtp_export/towers) from pixels; the reference reads
hidden_states / attentions of HF's eager tower. token_index must be identical (VisPruner: its overlap rule)
and embeddings within ATOL/RTOL. An image whose selection sits within float32 rounding of a tie is passed
over by the same screen as the export's verification (verify.determined_references), with the next image.
"""

import dataclasses
import zlib

import pytest
import torch

from tests.methods import reference, reference_next
from tests.methods.sweep_towers import (
    OfficialSignals, TowerShape, draw_qwen_shape, draw_shape, drawn_keeps, official_signals, qwen_stack_and_reference,
    sample_inputs, stack_of,
)
from tests.methods.test_parity_next import default_layout
from vtp_export.export.graph import VisionGraph
from vtp_export.export.verify import MIN_SET_OVERLAP, determined_references
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.onnx.names import PIXEL_VALUES, TEXT_EMBEDS
from vtp_export.precision.agreement import matched_rows, set_overlap

pytestmark = pytest.mark.slow

ATOL, RTOL = 1e-5, 1e-5
IMAGES_PER_CASE = 8  # images tried for one whose selection is clear of float32 ties
LLAVA15_SHAPES = [draw_shape(i) for i in range(10)]
NEXT_SHAPES = [(draw_shape(100 + i), grid) for i, grid in enumerate([(1, 2), (2, 2), (2, 1)])]


def project(stack, tokens):
    with torch.no_grad():
        return stack.projector(tokens)


def llava15_official(name: str, method, signals: OfficialSignals, stack) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeds (1, K, D), token_index (1, K)) of the official code on one image."""
    keep, s = method.keep, signals
    if name in ("holov", "divprune", "cdpruner", "dart"):
        projected = project(stack, s.patches)
    match name:
        case "fastervlm":
            tokens, index = reference.fastervlm(s.hidden, s.cls_attention, keep)
        case "visionzip":
            tokens, index = reference.visionzip(s.hidden, s.cls_attention, s.keys, method.dominant, method.contextual)
        case "prumerge":
            tokens, index = reference.prumerge(s.hidden, s.next_q, s.next_k, keep - 1)
        case "prumerge_plus":
            tokens, index = reference.prumerge(s.hidden, s.next_q, s.next_k, method.top, method.lattice.tolist())
        case "vispruner":
            index = reference.vispruner(s.patches, s.attention(), keep)
            tokens = s.hidden[0, index[0]].unsqueeze(0)
        case "trim":
            tokens, index = reference.trim(s.patches, s.clip_patch_embeds, s.text_embeds, keep - 1)
            tokens, index = torch.stack(tokens), torch.stack(index)
        case "holov" if method.paper:
            return reference.holov_paper(projected, s.attention(), keep, round(method.settings["crops"] ** 0.5),
                                         method.settings["tau"])
        case "holov":
            return reference.holov(projected, s.attention(), keep, method.settings["crops"])
        case "divprune":
            return reference.divprune(projected, keep)
        case "cdpruner":
            return reference.cdpruner(projected, s.clip_patch_embeds, s.text_embeds, keep)
        case "dart":
            return reference.dart(projected, keep, method.settings["pivots"])
    return project(stack, tokens), index


def next_official(name: str, method, signals: OfficialSignals, stack) -> tuple[torch.Tensor, torch.Tensor]:
    """The official NeXT path where the method has one, else the LLaVA-1.5 method per crop in the default layout."""
    g, s = stack.geometry, signals
    grid, per_crop = (g.tile_rows, g.tile_cols), method.keep
    match name:
        case "fastervlm":
            tokens, index = reference_next.fastervlm_next(s.hidden, s.cls_attention, *grid, per_crop)
        case "vispruner":
            tokens, index = reference_next.vispruner_next(s.hidden, s.cls_attention, *grid, per_crop)
        case "visionzip":
            tokens, index = reference_next.visionzip_next(s.hidden, s.cls_attention, s.keys, *grid, method.dominant,
                                                          method.contextual)
        case "cdpruner":
            tokens, index = reference_next.cdpruner_next(project(stack, s.patches), s.clip_patch_embeds,
                                                         s.text_embeds[0], *grid, per_crop)
            return tokens.float().unsqueeze(0), index.unsqueeze(0)
        case "holov":
            tokens, index = reference_next.holov_next(project(stack, s.patches), s.cls_attention, *grid, method.keep,
                                                      method.settings["crops"])
            return tokens.unsqueeze(0), index.unsqueeze(0)
        case _:
            single = dataclasses.replace(g, crops=1, tile_rows=0, tile_cols=0)
            per_crop_method = type(method)(single, per_crop, **method.settings)
            crops = [llava15_official(name, per_crop_method, crop_signals(s, c), stack) for c in range(g.crops)]
            embeds, index = default_layout(torch.cat([e for e, _ in crops]), torch.cat([i for _, i in crops]), g)
            return embeds.unsqueeze(0), index.unsqueeze(0)
    return project(stack, tokens).unsqueeze(0), index.unsqueeze(0)


def crop_signals(signals: OfficialSignals, crop: int) -> OfficialSignals:
    return OfficialSignals(**{f.name: getattr(signals, f.name)[crop:crop + 1] for f in dataclasses.fields(signals)})


def check_case(model_name: str, stack, name: str, keep: int, options: dict, official, signals=None) -> None:
    """The method on one image whose selection is clear of float32 ties, against `official`, which reads the
    `signals` of that image (default: HF's CLIP signals, official_signals)."""
    model = MODELS.get(model_name)
    method = METHODS.get(name).create(stack.geometry, keep, options)
    graph = VisionGraph(model, stack, method)
    for image in range(IMAGES_PER_CASE):
        pixel_values, text_embeds = sample_inputs(stack, seed=1000 * keep + image)
        sample = {PIXEL_VALUES: pixel_values} | ({TEXT_EMBEDS: text_embeds} if method.text_conditioned else {})
        references = determined_references(graph, [sample], 1, seed=image)
        if references.exact[0] or not method.exact_selection:
            break
    # Else every image put the selection within rounding of a tie (PruMerge's attention order at keep ~ N): as
    # the export's verification, the last one is compared by kept set, embeddings by source token.
    outputs, exact = references.expected[0], references.exact[0]
    embeds, index = torch.from_numpy(outputs["image_embeds"]), torch.from_numpy(outputs["token_index"])
    read = signals or (lambda pixels, text: official_signals(stack, pixels, text))
    want_embeds, want_index = official(name, method, read(pixel_values, text_embeds), stack)
    if exact:
        assert torch.equal(index, want_index)
    else:
        assert set_overlap(index.numpy(), want_index.numpy()) >= MIN_SET_OVERLAP
        (got_at, want_at) = matched_rows(index.numpy(), want_index.numpy())
        embeds, want_embeds = embeds[got_at], want_embeds[want_at]
    torch.testing.assert_close(embeds, want_embeds.float(), atol=ATOL, rtol=RTOL)


SWEPT = [("fastervlm", {}), ("visionzip", {}), ("holov", {}), ("holov", {"variant": "paper"}), ("divprune", {}),
         ("prumerge", {}), ("prumerge_plus", {}), ("vispruner", {}), ("trim", {}), ("cdpruner", {}), ("dart", {})]


def keeps_for(name: str, stack) -> list[int]:
    method = METHODS.get(name)
    g = stack.geometry
    limit = min(g.num_patches, g.llm_width + 1) - 1 if name == "cdpruner" else g.num_patches - 1
    return drawn_keeps(limit, getattr(method, "minimum_keep", 1), g.num_patches, seed=zlib.crc32(f"{name} {g}".encode()))


def case_id(case) -> str:
    name, options = case
    return name + "".join(f"-{v}" for v in options.values())


@pytest.mark.parametrize("case", SWEPT, ids=case_id)
@pytest.mark.parametrize("shape", LLAVA15_SHAPES, ids=str)
def test_llava15_methods_equal_their_official_code(shape: TowerShape, case):
    name, options = case
    stack = stack_of(shape)
    for keep in keeps_for(name, stack):
        check_case("llava15", stack, name, keep, options, llava15_official)


NEXT_SWEPT = [("fastervlm", {}), ("visionzip", {}), ("holov", {}), ("vispruner", {}), ("cdpruner", {}),
              ("prumerge", {}), ("divprune", {}), ("dart", {}), ("trim", {})]


@pytest.mark.parametrize("case", NEXT_SWEPT, ids=case_id)
@pytest.mark.parametrize("shape_grid", NEXT_SHAPES, ids=lambda sg: f"{sg[0]}-{sg[1][0]}x{sg[1][1]}")
def test_llava_next_methods_equal_their_official_next_code(shape_grid, case):
    (shape, grid), (name, options) = shape_grid, case
    stack = stack_of(shape, grid)
    crops = stack.geometry.crops
    per_crop = keeps_for(name, stack_of(shape))
    keeps = [stack.geometry.num_patches * crops // 3] if name == "holov" else [k * crops for k in per_crop[:2]]
    for keep in keeps:
        check_case("llava-next", stack, name, keep, options, next_official)


QWEN_SHAPES = [draw_qwen_shape(i) for i in range(6)]
QWEN_SWEPT = [("holov", {}), ("dart", {}), ("divprune", {})]


@pytest.mark.parametrize("name", [name for name, _ in QWEN_SWEPT])
@pytest.mark.parametrize("shape", QWEN_SHAPES, ids=str)
def test_qwen2_5_vl_methods_equal_their_official_code(shape, name):
    stack, visual = qwen_stack_and_reference(shape)

    def official(name, method, pixel_values, stack):
        with torch.no_grad():
            merged, window_scores, window_index = reference.holov_qwen_scores(
                visual, *reference.qwen_patch_rows(torch.from_numpy(pixel_values)))
        match name:
            case "holov":
                tokens, index = reference.holov_qwen(merged, window_scores, window_index, method.keep)
                return tokens.unsqueeze(0), index.unsqueeze(0)
            case "dart":
                return reference.dart(merged.unsqueeze(0), method.keep, method.settings["pivots"])
            case "divprune":
                return reference.divprune(merged.unsqueeze(0), method.keep)

    m = stack.geometry.num_patches
    for keep in drawn_keeps(m - 1, 1, m, seed=zlib.crc32(f"{name} {shape}".encode())):
        check_case("qwen2.5-vl", stack, name, keep, {}, official, signals=lambda pixel_values, _: pixel_values)
