"""HoloV (reference variant): budget split over crops of the raster sequence by a holistic crop score.

Reference: obananas/HoloV @1d2e65e, llava/model/utils.py::HoloV (methods-spec.md, "HoloV").
Parity: tests/methods/test_holov.py.

Static form of the official per-crop loop: crops are padded to a common length M, the per-crop quota
(data-dependent, bounded by M) is applied as `rank < quota`, and the kept tokens are compacted into the
fixed keep slots by a TopK over their output positions, then gathered. Slots left over are zero, index -1.
"""

from typing import Any

import torch
from torch import Tensor, nn

from vtp_export.errors import UsageError
from vtp_export.graph_io import NO_SOURCE
from vtp_export.methods import METHODS
from vtp_export.methods.base import MethodOption, PruningMethod, VisionFeatures
from vtp_export.methods.ops import exclusive_cumsum, gather_rows, smallest_indices, top_indices
from vtp_export.models import Geometry

ALPHA = 0.09
ATTENTION_SCALE = 1e3
EPS = 1e-6


def crop_layout(num_tokens: int, crops: int) -> list[range]:
    """Contiguous chunks of the raster sequence; the first num_tokens % crops chunks get one extra token."""
    size, extra = divmod(num_tokens, crops)
    layout, start = [], 0
    for c in range(crops):
        length = size + (1 if c < extra else 0)
        if length:
            layout.append(range(start, start + length))
        start += length
    return layout


@METHODS.register("holov")
class HoloV(PruningMethod):
    name = "holov"
    summary = "per-crop budget from attention + similarity-variance crop scores, top attention inside crops"
    reference = "obananas/HoloV@1d2e65e llava/model/utils.py::HoloV"
    projects_all_tokens = True
    options = (MethodOption("crops", int, 16, "number of crops C of the raster token sequence"),)

    def __init__(self, geometry: Geometry, keep: int, **options: Any) -> None:
        super().__init__(geometry, keep, **options)
        crops = self.settings["crops"]
        if not 1 <= crops <= geometry.num_patches:
            raise UsageError(f"method holov: crops={crops} must be in 1..{geometry.num_patches}")
        layout = crop_layout(geometry.num_patches, crops)
        width = max(len(r) for r in layout)
        sizes = torch.tensor([len(r) for r in layout])
        self.width = width
        self.register_buffer("sizes", sizes, persistent=False)
        self.register_buffer("members", torch.tensor([[*r] + [r[0]] * (width - len(r)) for r in layout]), persistent=False)
        self.register_buffer("valid", torch.arange(width) < sizes.unsqueeze(1), persistent=False)
        self.register_buffer("single", sizes <= 1, persistent=False)  # the official code scores these by mean attention

    def crop_scores(self, tokens: Tensor, attention: Tensor) -> Tensor:
        """(B, C, M, D) projected tokens and (B, C, M) attention of each crop -> (B, C) crop scores."""
        valid = self.valid.to(tokens.dtype)
        sizes = self.sizes.to(tokens.dtype)
        pairs = (1 - torch.eye(self.width, dtype=tokens.dtype, device=tokens.device)) * valid.unsqueeze(-1) * valid.unsqueeze(-2)
        normalised = tokens / (tokens.norm(dim=-1, keepdim=True) + EPS)
        similarity = normalised @ normalised.transpose(-1, -2) * pairs
        denominator = (sizes - 1).clamp(min=1).unsqueeze(-1)
        mean = similarity.sum(dim=-1) / denominator
        variance = ((similarity - mean.unsqueeze(-1)) ** 2 * valid.unsqueeze(-2)).sum(dim=-1) / denominator
        scaled = attention * ATTENTION_SCALE

        def crop_mean(x: Tensor) -> Tensor:
            return (x * valid).sum(dim=-1) / sizes

        gamma = crop_mean(scaled.abs()) / (crop_mean(variance.abs()) + EPS)
        scores = crop_mean(scaled + ALPHA * gamma.unsqueeze(-1) * variance)
        return torch.where(self.single, crop_mean(attention), scores)

    def quotas(self, crop_scores: Tensor) -> Tensor:
        """(B, C) tokens each crop may keep: floor(w * keep), remainder +1 to the largest weights."""
        weights = crop_scores / (crop_scores.sum(dim=-1, keepdim=True) + EPS)
        allocated = torch.floor(weights * self.keep).to(torch.long)
        remaining = self.keep - allocated.sum(dim=-1, keepdim=True)
        crops = weights.shape[-1]
        position = torch.arange(crops, device=weights.device)
        ahead = (weights.unsqueeze(-1) > weights.unsqueeze(-2)) | (
            (weights.unsqueeze(-1) == weights.unsqueeze(-2)) & (position.unsqueeze(-1) < position)
        )
        rank = ahead.sum(dim=-2)  # crops ranked by weight, ties to the lower crop
        return (allocated + (rank < remaining).to(torch.long)).clamp(min=0)

    def forward(self, features: VisionFeatures, projector: nn.Module) -> tuple[Tensor, Tensor]:
        projected = projector(features.patches).float()
        attention = features.patch_attention()
        batch, crops, width = projected.shape[0], self.members.shape[0], self.width
        flat_members = self.members.reshape(1, -1).expand(batch, -1)
        crop_tokens = gather_rows(projected, flat_members).reshape(batch, crops, width, -1)
        crop_attention = attention.gather(1, flat_members).reshape(batch, crops, width)
        allocated = self.quotas(self.crop_scores(crop_tokens, crop_attention))

        masked_attention = torch.where(self.valid, crop_attention, torch.full_like(crop_attention, -torch.inf))
        by_attention = top_indices(masked_attention, width)
        raster = torch.arange(width, device=projected.device).expand_as(by_attention)
        whole = (allocated >= self.sizes).unsqueeze(-1)
        order = torch.where(whole, raster, by_attention)  # slot j of crop c -> member index within the crop
        quota = torch.minimum(allocated, self.sizes)
        slot = torch.arange(width, device=projected.device)
        kept = slot < quota.unsqueeze(-1)
        output_position = exclusive_cumsum(quota).unsqueeze(-1) + slot
        flat_count = crops * width
        # Unkept slots sort after every kept one, each on a distinct key.
        unkept_key = flat_count + torch.arange(flat_count, device=slot.device).reshape(crops, width)
        keys = torch.where(kept, output_position, unkept_key)
        picked = smallest_indices(keys.reshape(batch, flat_count).to(torch.float32), self.keep)

        members = self.members.unsqueeze(0).expand(batch, -1, -1).gather(2, order).reshape(batch, flat_count)
        token = members.gather(1, picked)
        filled = torch.arange(self.keep, device=token.device) < quota.sum(dim=-1, keepdim=True)
        embeds = gather_rows(projected, token) * filled.unsqueeze(-1).to(projected.dtype)
        index = torch.where(filled, token + 1, torch.full_like(token, NO_SOURCE))
        return embeds, index
