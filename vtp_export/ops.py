"""Static-shape selection ops shared by the methods, the models' crop layouts and the vision graph. Every op
exports to TopK/Gather with constant sizes.

Ties break towards the lower index everywhere: torch's stable sort does, and ONNX TopK is specified to.
Index sorting goes through float32 keys (exact below 2**24) so that every TopK in the graph is a float TopK.
"""

import torch
from torch import Tensor


def for_scoring(x: Tensor) -> Tensor:
    """x in at least float32: scores and selections never run in fp16/bf16 (float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def top_indices(scores: Tensor, k: int) -> Tensor:
    """Indices of the k largest scores along the last axis, in descending order of score."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]


def smallest_indices(keys: Tensor, k: int) -> Tensor:
    """Indices of the k smallest keys along the last axis, in ascending order of key."""
    return torch.sort(keys, dim=-1, stable=True).indices[..., :k]


def sorted_ascending(indices: Tensor) -> Tensor:
    """The same index sets, each sorted ascending."""
    order = smallest_indices(indices.to(torch.float32), indices.shape[-1])
    return indices.gather(-1, order)


def gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x (B, T, C), index (B, K) -> (B, K, C)."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def complement_ascending(chosen: Tensor, length: int) -> Tensor:
    """(B, length - k) positions of 0..length-1 not in `chosen` (B, k, distinct), ascending."""
    positions = torch.arange(length, device=chosen.device)
    is_chosen = (chosen.unsqueeze(-1) == positions).any(dim=1)
    keys = positions.to(torch.float32) + is_chosen.to(torch.float32) * length
    return smallest_indices(keys, length - chosen.shape[-1])


def exclusive_cumsum(x: Tensor, dim: int = -1) -> Tensor:
    return torch.cumsum(x, dim=dim) - x
