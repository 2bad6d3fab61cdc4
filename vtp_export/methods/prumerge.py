"""PruMerge and PruMerge+ (static forms): top CLS-attention tokens of the next layer, each merged with its
32 nearest neighbours by key cosine, plus one token summing everything pruned.

Reference: 42Shawn/LLaVA-PruMerge@097c041 llava/model/multimodal_encoder/clip_encoder.py,
token_prune_merge_advanced (PruMerge) and token_prune_merge_advanced_plus (PruMerge+) (methods-spec.md,
"PruMerge / PruMerge+"). Parity: tests/methods/test_parity.py::test_prumerge, ::test_prumerge_plus.

Static forms: the adaptive IQR count is data-dependent, so PruMerge keeps a fixed k = keep - 1, and
PruMerge+ is the official non-adaptive form (top-k, then a fixed spatial lattice appended without
de-duplication, then the extra token; 72 + 72 + 1 for 576 tokens at keep 145) generalised to any N and keep.
The official complement of a list with duplicates drops its smallest non-kept positions (sort of a
scatter-masked arange, first len(list) entries cut); `pruned_positions` states that rule exactly.
"""

import torch
from torch import Tensor, nn

from vtp_export.contract import NO_SOURCE, Geometry, NeighbourMerge, Selection, Signal, Stream, VisionFeatures
from vtp_export.errors import UsageError
from vtp_export.methods.base import METHODS, PruningMethod
from vtp_export.ops import gather_rows, sorted_ascending, top_indices

NEIGHBOURS = 32


def spatial_lattice(num_patches: int, count: int) -> list[int]:
    """`count` evenly spaced patch positions, offset by half a step: arange(4, 575, 8) for 576 and 72."""
    step = num_patches // count
    return [step // 2 + step * i for i in range(count)]


def pruned_positions(kept: Tensor, num_patches: int) -> Tensor:
    """The N - len(kept) largest patch positions not in `kept` (B, k, duplicates allowed), ascending."""
    positions = torch.arange(num_patches, device=kept.device)
    is_kept = (kept.unsqueeze(-1) == positions).any(dim=1)
    keys = torch.where(is_kept, torch.full_like(positions, -1), positions).to(torch.float32)
    return sorted_ascending(top_indices(keys, num_patches - kept.shape[-1]))


class PruneMerge(PruningMethod):
    """Shared by both variants: `kept_positions` chooses the kept list, the rest is the official merge."""

    requires = frozenset({Signal.NEXT_LAYER})
    unsupported_reason = "PruMerge selects by the next layer's CLS attention and has no form for towers without CLS"
    minimum_keep = 2

    @classmethod
    def output_tokens(cls, geometry: Geometry, keep: int | None) -> int:
        keep = super().output_tokens(geometry, keep)
        if keep < cls.minimum_keep:
            raise UsageError(f"method {cls.name} needs --keep >= {cls.minimum_keep} (kept tokens + the merged extra token)")
        return keep

    def kept_positions(self, attention: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        patches = features.patches
        attention = features.next_cls_attention[:, 1:]  # (B, N)
        keys = features.next_keys[:, 1:]
        keys = keys / keys.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        kept = self.kept_positions(attention)
        pruned = pruned_positions(kept, patches.shape[1])
        pool = torch.cat([kept, pruned], dim=1)  # (B, N): the kept list, then the pruned tokens

        slots = kept.shape[1]
        similarity = gather_rows(keys, kept) @ gather_rows(keys, pool).transpose(1, 2)  # (B, k, N)
        itself = torch.eye(slots, pool.shape[1], dtype=torch.bool, device=pool.device)
        similarity = similarity.masked_fill(itself, -torch.inf)
        neighbours = min(NEIGHBOURS, pool.shape[1] - 1)
        nearest = pool.gather(1, top_indices(similarity, neighbours).reshape(pool.shape[0], -1))  # (B, k*32)
        index = torch.cat([kept + 1, torch.full_like(kept[:, :1], NO_SOURCE)], dim=1)
        # Each kept token plus its neighbours weighted by their attention; the extra token sums the weighted pruned.
        return Selection(Stream.PATCHES, kept, index, merge=NeighbourMerge(attention, nearest, neighbours, pruned))


@METHODS.register("prumerge")
class PruMerge(PruneMerge):
    name = "prumerge"
    summary = "keep-1 tokens by next-layer CLS attention, each merged with 32 key-nearest tokens, + 1 pruned sum"
    reference = "42Shawn/LLaVA-PruMerge@097c041 clip_encoder.py::token_prune_merge_advanced"

    def kept_positions(self, attention: Tensor) -> Tensor:
        return top_indices(attention, self.keep - 1)


@METHODS.register("prumerge_plus")
class PruMergePlus(PruneMerge):
    name = "prumerge_plus"
    summary = "PruMerge + a spatial lattice of (keep-1)//2 tokens appended before merging (non-adaptive form)"
    reference = "42Shawn/LLaVA-PruMerge@097c041 clip_encoder.py::token_prune_merge_advanced_plus"
    minimum_keep = 3

    def __init__(self, geometry: Geometry, keep: int, **options) -> None:
        super().__init__(geometry, keep, **options)
        spatial = (keep - 1) // 2
        self.top = keep - 1 - spatial
        self.register_buffer("lattice", torch.tensor(spatial_lattice(geometry.num_patches, spatial)), persistent=False)

    def kept_positions(self, attention: Tensor) -> Tensor:
        lattice = self.lattice.unsqueeze(0).expand(attention.shape[0], -1)
        return torch.cat([top_indices(attention, self.top), lattice], dim=1)
