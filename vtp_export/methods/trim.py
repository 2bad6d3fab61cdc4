"""TRIM: patches ranked by CLIP similarity to the question (sign flipped, as released), kept in raster order,
plus one token averaging every unselected patch.

Reference: FreedomIntelligence/TRIM@f5a232d llava/model/multimodal_encoder/clip_encoder.py::token_reduction
(methods-spec.md, "TRIM"). Parity: tests/methods/test_parity.py::test_trim_fixed, ::test_trim_iqr.

Image side: CLIP's visual_projection(post_layernorm(patches)) against the question's CLIP text embedding
(both unnormalised), p = softmax(-similarity). The released code keeps the *largest* p, i.e. the patches
least similar to the question in raw score; the maintainers confirmed that is intended.
Counts: `fixed` keeps keep - 1 patches (the official fixed ratio r is keep - 1 = int(N * r)); `iqr` is the
official default (TRIM:-1): the number of p above Q3 + 1.5 IQR (numpy's linear percentiles, per image),
which is data-dependent, so the graph has keep slots and a num_valid output: the kept patches (at most
keep - 1, the highest p first if the count exceeds that), the mean token, then zero slots with index -1.
"""

from typing import Any

import torch
from torch import Tensor, nn

from vtp_export.contract import NO_SOURCE, Geometry, MeanOfRest, Selection, Signal, Stream, VisionFeatures
from vtp_export.errors import UsageError
from vtp_export.methods.base import METHODS, MethodOption, PruningMethod
from vtp_export.onnx.names import NUM_VALID, VISION_OUTPUTS
from vtp_export.ops import for_scoring, smallest_indices, top_indices

COUNTS = ("fixed", "iqr")


def interpolated_quantile(ascending: Tensor, q: float) -> Tensor:
    """numpy.percentile(..., method="linear") of each row of an ascending-sorted (B, N) tensor -> (B,)."""
    position = (ascending.shape[-1] - 1) * q
    low = int(position)
    high = min(low + 1, ascending.shape[-1] - 1)
    fraction = position - low
    a, b = ascending[:, low], ascending[:, high]
    # numpy's _lerp: from the nearer end, so that fraction 1 gives b exactly
    return b - (b - a) * (1 - fraction) if fraction >= 0.5 else a + (b - a) * fraction


def iqr_outlier_count(scores: Tensor) -> Tensor:
    """(B, N) -> (B,) int64: how many scores exceed Q3 + 1.5 * (Q3 - Q1)."""
    ascending = torch.sort(scores, dim=-1, stable=True).values
    q1, q3 = interpolated_quantile(ascending, 0.25), interpolated_quantile(ascending, 0.75)
    bound = q3 + 1.5 * (q3 - q1)
    return (scores > bound.unsqueeze(-1)).sum(dim=-1)


@METHODS.register("trim")
class Trim(PruningMethod):
    name = "trim"
    summary = "patches by CLIP text-image similarity (sign flipped as released) + 1 mean of the rest"
    reference = "FreedomIntelligence/TRIM@f5a232d clip_encoder.py::token_reduction"
    requires = frozenset({Signal.CLIP_TEXT})
    unsupported_reason = "TRIM compares patches with the question in CLIP's joint space"
    options = (MethodOption(
        "count", str, "fixed", "fixed: keep-1 patches + the mean token; iqr: the official adaptive count "
        "(IQR outliers), at most keep-1 patches, valid slots in num_valid", choices=COUNTS,
    ),)

    def __init__(self, geometry: Geometry, keep: int, **options: Any) -> None:
        super().__init__(geometry, keep, **options)
        self.adaptive = self.settings["count"] == "iqr"
        if self.adaptive and geometry.crops > 1:
            raise UsageError("method trim: count=iqr gives each crop its own data-dependent count, which has no "
                             "static multi-crop layout; use count=fixed with AnyRes crops")

    @property
    def output_names(self) -> tuple[str, ...]:
        return (*VISION_OUTPUTS, NUM_VALID) if self.adaptive else VISION_OUTPUTS

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        patches = features.patches
        batch, num_patches = patches.shape[0], self.geometry.num_patches
        similarity = (features.clip_patch_embeds @ features.text_embeds.unsqueeze(-1)).squeeze(-1)
        scores = torch.softmax(-for_scoring(similarity), dim=-1)
        slots = self.keep - 1
        candidates = top_indices(scores, slots)  # highest p first
        slot = torch.arange(slots, device=patches.device)
        if self.adaptive:
            count = iqr_outlier_count(scores).clamp(max=slots)
        else:
            count = torch.full((batch,), slots, dtype=torch.long, device=patches.device)
        chosen = slot < count.unsqueeze(-1)
        # The chosen candidates in raster order first, the unchosen after them.
        keys = torch.where(chosen, candidates, num_patches + slot).to(torch.float32)
        order = smallest_indices(keys, slots)
        kept, chosen = candidates.gather(1, order), chosen.gather(1, order)

        positions = torch.arange(num_patches, device=patches.device)
        selected = ((kept.unsqueeze(-1) == positions) & chosen.unsqueeze(-1)).any(dim=1)  # (B, N)
        rest = (~selected).to(patches.dtype)

        # Output slot j: kept patch j for j < count, the mean of the rest at j == count, zero after.
        output_slot = torch.arange(self.keep, device=patches.device).unsqueeze(0)
        source = torch.where(output_slot < count.unsqueeze(-1), output_slot, torch.full_like(output_slot, slots))
        valid = output_slot <= count.unsqueeze(-1)
        index = torch.cat([kept + 1, torch.full((batch, 1), NO_SOURCE, device=kept.device)], dim=1)
        index = torch.where(output_slot < count.unsqueeze(-1), index, torch.full_like(index, NO_SOURCE))
        return Selection(Stream.PATCHES, kept, index, merge=MeanOfRest(rest, source), filled=valid,
                         num_valid=count + 1 if self.adaptive else None)
