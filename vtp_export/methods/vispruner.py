"""VisPruner: half the budget by CLS attention, the other half by repeated bipartite de-duplication.

Reference: Theia-4869/VisPruner@aefa01a llava/model/llava_arch.py::encode_images (methods-spec.md,
"VisPruner"). Parity: tests/methods/test_parity.py::test_vispruner.
Towers without CLS (Qwen2.5-VL): the author's substitute (Theia-4869/VisPruner issue #1): the attention each
token receives, averaged over the merger's 2x2 units, ranks the merged tokens; the de-duplication compares the
features before the projector, as on LLaVA (for Qwen the merger's input, a unit's four patch features).

The de-duplication loop's round sizes depend only on N and keep, so it is unrolled: each round splits
the residual list into even (a) and odd (b) positions, drops the r = min(8, R - T_div) `a` tokens most
similar to any `b`, and continues with [remaining a in descending-score order, b]. For an odd residual
list every unpaired `a` stays a candidate (the official code fails there: it expands to R // 2 - r rows).
Cosines come from one (N, N) similarity matrix gathered per round, not a matmul per round.

The kept set is chaotic under float noise: the order of the surviving `a` tokens decides the next
round's pairing, so a 1e-7 difference between backends can change later rounds. Exports therefore check
set overlap with PyTorch rather than identical indices (exact_selection = False).
"""

from typing import Any

import torch
from torch import nn

from vtp_export.contract import Geometry, Selection, Signal, Stream, VisionFeatures
from vtp_export.errors import UsageError
from vtp_export.methods.base import METHODS, MethodOption, PruningMethod
from vtp_export.ops import gather_rows, sorted_ascending, top_indices

DROP_PER_ROUND = 8


def round_drops(residual: int, diverse: int) -> list[int]:
    """r of each round of the official loop, starting from `residual` candidates.

    A round removes min(r, ceil(R / 2)) tokens: only `a` tokens are dropped.
    """
    drops = []
    while diverse > 0 and residual - diverse > 0:
        r = min(DROP_PER_ROUND, residual - diverse)
        drops.append(r)
        residual -= min(r, (residual + 1) // 2)
    return drops


@METHODS.register("vispruner")
class VisPruner(PruningMethod):
    name = "vispruner"
    summary = "important tokens by CLS attention + diverse tokens by iterative bipartite de-duplication"
    reference = "Theia-4869/VisPruner@aefa01a llava/model/llava_arch.py::encode_images"
    requires = frozenset({Signal.PATCH_SCORES})
    options = (MethodOption("important_ratio", float, 0.5, "share of keep chosen by attention (T_imp = int(keep*r))"),)
    exact_selection = False

    def __init__(self, geometry: Geometry, keep: int, **options: Any) -> None:
        super().__init__(geometry, keep, **options)
        ratio = self.settings["important_ratio"]
        if not 0.0 <= ratio <= 1.0:
            raise UsageError(f"method vispruner: important_ratio={ratio} must be in [0, 1]")
        self.important = int(keep * ratio)
        self.drops = round_drops(geometry.num_patches - self.important, keep - self.important)

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        patches = features.patches
        order = top_indices(features.patch_attention(), patches.shape[1])
        important, residual = order[:, :self.important], order[:, self.important:]
        unit = patches / patches.norm(dim=-1, keepdim=True)
        similarity = unit @ unit.transpose(1, 2)  # (B, N, N)
        for r in self.drops:
            a, b = residual[:, ::2], residual[:, 1::2]
            pairs = gather_rows(similarity, a).gather(2, b.unsqueeze(1).expand(-1, a.shape[1], -1))
            distinct = top_indices(pairs.max(dim=-1).values, a.shape[1])[:, r:]
            residual = torch.cat([a.gather(1, distinct), b], dim=1)
        kept = sorted_ascending(torch.cat([important, residual], dim=1) if self.keep > self.important else important)
        return Selection(Stream.PATCHES, kept, kept + 1)
