"""DivPrune: greedy max-min diversity over projected tokens with distance 1 - cosine.

Reference: vbdi/divprune@799e2d9, DivPrune() (methods-spec.md, "DivPrune").
Parity: tests/methods/test_parity.py::test_divprune.
The greedy loop has a fixed length (keep), so it is unrolled: keep ArgMax/Gather/Min steps.
"""

import torch
from torch import nn

from vtp_export.contract import Selection, Stream, VisionFeatures
from vtp_export.methods.base import METHODS, PruningMethod
from vtp_export.ops import for_scoring, gather_rows, sorted_ascending


@METHODS.register("divprune")
class DivPrune(PruningMethod):
    name = "divprune"
    summary = "greedy max-min diversity (1 - cosine) over projected tokens, raster order"
    reference = "vbdi/divprune@799e2d9 DivPrune()"
    projects_all_tokens = True
    requires = frozenset()

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        projected = for_scoring(projector(features.patches))
        unit = projected / projected.norm(dim=-1, keepdim=True)
        distance = 1.0 - unit @ unit.transpose(1, 2)  # (B, N, N), symmetric
        # First pick: the token farthest from its nearest neighbour (second smallest: the smallest is itself).
        nearest = torch.topk(distance, 2, dim=1, largest=False).values[:, 1]
        pick = nearest.argmax(dim=-1, keepdim=True)
        picks = [pick]
        closest = gather_rows(distance, pick).squeeze(1)  # distance of every token to the picked set
        for _ in range(self.keep - 1):
            pick = closest.argmax(dim=-1, keepdim=True)
            picks.append(pick)
            closest = torch.minimum(closest, gather_rows(distance, pick).squeeze(1))
        kept = sorted_ascending(torch.cat(picks, dim=1))
        return Selection(Stream.PROJECTED, kept, kept + 1, projected=projected)
