"""DART, as TensorRT Edge-LLM runs it on Jetson: duplication-aware selection on the image embeddings the LLM
receives, by pivot tokens of the largest L1 norm.

Reference: NVIDIA/TensorRT-Edge-LLM cpp/runtime/preprocess/dartPruner.cpp and its documentation
(docs/source/user_guide/features/visual-token-pruning.md), the embedding-level form of ZichenWen1/DART (the
paper's form runs inside the LLM at decoder layer 2 with layer-1 keys and states, which a vision graph does not
have). Parity: tests/methods/test_parity.py::test_dart.

1. Projected tokens P (B, N, D) (Qwen2.5-VL: the merger's output; LLaVA: the projector's).
2. Pivots: the min(pivots, keep) tokens of largest L1 norm, ties to the lower index; they are kept.
3. For each pivot in that order, per = ceil(remaining / pivots left) more tokens: those with the most negative
   cosine (dot / max(|a| |b|, 1e-8)) to the pivot among the tokens not kept yet, ties to the lower index.
4. Exactly keep tokens, in raster order (Edge-LLM sorts its keep list; kept tokens keep their positions).

Image pivots only: Edge-LLM adds 4 text pivots (the prompt tokens of largest embedding L1 norm); the vision
graph has no prompt input, so the whole budget is split over the image pivots (Edge-LLM's form when a prompt
has no text). keep is exact here; Edge-LLM derives it as ceil(N (1 - r)) from a reduction ratio r.
The per-pivot counts depend only on keep and the pivot count, so every TopK has a constant K.
"""

from typing import Any

import torch
from torch import nn

from vtp_export.contract import Geometry, Selection, Stream, VisionFeatures
from vtp_export.errors import UsageError
from vtp_export.methods.base import METHODS, MethodOption, PruningMethod
from vtp_export.ops import for_scoring, gather_rows, sorted_ascending, top_indices

COSINE_EPS = 1e-8  # Edge-LLM's kCosineEps, torch.nn.functional.cosine_similarity's eps


def per_pivot_counts(keep: int, pivots: int) -> list[int]:
    """Tokens each pivot adds after the pivots themselves: ceil(remaining / pivots left), in pivot order."""
    counts, kept = [], pivots
    for p in range(pivots):
        per = -(-(keep - kept) // (pivots - p))
        counts.append(per)
        kept += per
    return counts


@METHODS.register("dart")
class Dart(PruningMethod):
    name = "dart"
    summary = "pivots of largest embedding L1 norm + the tokens least similar to them (TensorRT Edge-LLM), raster order"
    reference = "NVIDIA/TensorRT-Edge-LLM dartPruner.cpp (embedding-level DART, ZichenWen1/DART)"
    requires = frozenset()
    projects_all_tokens = True
    options = (MethodOption("pivots", int, 4, "image pivot tokens (Edge-LLM's pivotImageTokens)"),)

    def __init__(self, geometry: Geometry, keep: int, **options: Any) -> None:
        super().__init__(geometry, keep, **options)
        if self.settings["pivots"] < 1:
            raise UsageError(f"method dart: pivots={self.settings['pivots']} must be at least 1")
        self.pivots = min(self.settings["pivots"], keep)
        self.counts = per_pivot_counts(keep, self.pivots)

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        projected = projector(features.patches)
        tokens = for_scoring(projected)
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        pivots = top_indices(tokens.abs().sum(dim=-1), self.pivots)  # (B, P)
        norms = tokens.norm(dim=-1)
        dots = gather_rows(tokens, pivots) @ tokens.transpose(1, 2)  # (B, P, N)
        cosine = dots / (gather_rows(norms.unsqueeze(-1), pivots) * norms.unsqueeze(1)).clamp(min=COSINE_EPS)
        picks = [pivots]
        taken = (pivots.unsqueeze(-1) == positions).any(dim=1)
        for p, count in enumerate(self.counts):
            if count == 0:
                continue
            pick = top_indices(torch.where(taken, -torch.inf, -cosine[:, p]), count)
            taken = taken | (pick.unsqueeze(-1) == positions).any(dim=1)
            picks.append(pick)
        kept = sorted_ascending(torch.cat(picks, dim=1))
        return Selection(Stream.PROJECTED, kept, kept + 1, projected=projected)
