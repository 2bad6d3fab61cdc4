"""HoloV: the budget split over crops by a holistic crop score (attention + similarity variance).

Reference: obananas/HoloV @1d2e65e, llava/model/utils.py::HoloV (methods-spec.md, "HoloV").
Parity: tests/methods/test_parity.py::test_holov (reference), ::test_holov_paper (paper).

variant=reference (default, as coded, what produced the published numbers): crops are 1-D chunks of the
raster sequence, linear crop weights, top attention inside crops, zero padding when crops overflow.
Static form of the official per-crop loop: crops are padded to a common length M, the per-crop quota
(data-dependent, bounded by M) is applied as `rank < quota`, and the kept tokens are compacted into the
fixed keep slots by a TopK over their output positions, then gathered. Slots left over are zero, index -1.

variant=paper (eq. 1-5): 2-D square crops of the patch grid, tokens ranked by the holistic score H
inside crops, softmax crop weights with temperature tau, overflow redistributed for a fixed number of
rounds (q_c = min(q_c + floor(L w_c (M_c - q_c) / sum_c' w_c' (M_c' - q_c')), M_c), L what is left),
the remaining shortfall filled by the highest-H undecided tokens. Always exactly keep tokens, raster order.
The paper gives no tau value; the default 1.0 is ours.

LLaVA-NeXT (obananas/HoloV llava/model/llava_arch.py, methods-spec.md): one budget K over the image's whole
sequence (VisionFeatures.image_sequence, the model's layout), the base crop's patches then the tiles' in
full-grid raster order, in C contiguous chunks as above, each token scored by its own crop's CLS attention row.
The official code unpads that sequence by the image's size first (data-dependent); the static form keeps the
fixed grid (identical for images of the grid's aspect). The paper variant is defined on one square patch grid
and refuses AnyRes crops.

Crops by default: 16 on CLS towers (the official LLaVA code); on towers without CLS (Qwen2.5-VL) the official
Qwen code's max(1, int((1024/576) * N / keep)) chunks of the merged tokens (obananas/HoloV@dee615c
qwen-model-HoloV/modeling_qwen2_5_vl.py), which keeps LLaVA's 16 chunks at 576 tokens and 64 kept and scales
the chunk count with N / keep. Its scores are the attention each merged token receives in the last block
(towers/qwen.py), paired with the merged token they belong to: the official code pairs raster-order features
with window-order scores and starts the span one token early, at <|vision_start|> (README, Qwen2.5-VL).
The paper variant keeps 16 crops by default and lays them over rows x cols grids too.
"""

import math
from typing import Any

import torch
from torch import Tensor, nn

from vtp_export.contract import NO_SOURCE, Geometry, Selection, Signal, Stream, VisionFeatures
from vtp_export.errors import UsageError
from vtp_export.methods.base import METHODS, MethodOption, PruningMethod
from vtp_export.ops import exclusive_cumsum, for_scoring, gather_rows, smallest_indices, top_indices

ALPHA = 0.09
ATTENTION_SCALE = 1e3
EPS = 1e-6


VARIANTS = ("reference", "paper")


def crop_layout(num_tokens: int, crops: int) -> list[list[int]]:
    """Contiguous chunks of the raster sequence; the first num_tokens % crops chunks get one extra token."""
    size, extra = divmod(num_tokens, crops)
    layout, start = [], 0
    for c in range(crops):
        length = size + (1 if c < extra else 0)
        if length:
            layout.append(list(range(start, start + length)))
        start += length
    return layout


def spatial_crop_layout(rows: int, cols: int, side: int) -> list[list[int]]:
    """side x side blocks of a rows x cols raster (block edges at floor(i * rows / side), floor(j * cols / side)),
    members in raster order."""
    row_edges = [i * rows // side for i in range(side + 1)]
    col_edges = [j * cols // side for j in range(side + 1)]
    return [[r * cols + c for r in range(row_edges[i], row_edges[i + 1]) for c in range(col_edges[j], col_edges[j + 1])]
            for i in range(side) for j in range(side)]


def default_crops(geometry: Geometry, keep: int, paper: bool) -> int:
    """16 (the official LLaVA code, and the paper variant); the official Qwen2.5-VL code's formula on towers
    without CLS, with its float operations, at most one crop per token (its chunks beyond N are empty)."""
    if geometry.cls_token or paper:
        return 16
    return min(max(1, int(((1024 / 576) * geometry.num_patches) / keep)), geometry.num_patches)


@METHODS.register("holov")
class HoloV(PruningMethod):
    name = "holov"
    summary = "per-crop budget from attention + similarity-variance crop scores (reference or paper variant)"
    reference = "obananas/HoloV@1d2e65e llava/model/utils.py::HoloV"
    requires = frozenset({Signal.PATCH_SCORES})
    projects_all_tokens = True
    options = (
        MethodOption("variant", str, "reference", "reference: as the official code; paper: eq. 1-5 of the paper",
                     choices=VARIANTS),
        MethodOption("crops", int, None, "crops C: 1-D chunks of the raster sequence (reference), or a square "
                     "number of 2-D blocks of the patch grid (paper); default 16, or on towers without CLS "
                     "max(1, int(1024/576 * N / keep)) as HoloV's Qwen2.5-VL code"),
        MethodOption("tau", float, 1.0, "paper variant: temperature of the softmax crop weights"),
    )

    @classmethod
    def output_tokens(cls, geometry: Geometry, keep: int | None) -> int:
        """HoloV spends one budget over the image's whole sequence, whatever its crops: 1..crops*N-1."""
        whole = geometry.tokens_per_image
        if keep is None:
            raise UsageError(f"method holov needs --keep (1..{whole - 1})")
        if not 1 <= keep < whole:
            raise UsageError(f"--keep {keep} is out of range for holov: the model has {whole} tokens per image, "
                             f"use 1..{whole - 1}")
        return keep

    @property
    def tokens_per_image(self) -> int:
        return self.keep

    def __init__(self, geometry: Geometry, keep: int, **options: Any) -> None:
        super().__init__(geometry, keep, **options)
        self.paper = self.settings["variant"] == "paper"
        if self.settings["crops"] is None:
            self.settings["crops"] = default_crops(geometry, keep, self.paper)
        crops = self.settings["crops"]
        length = geometry.tokens_per_image  # the sequence the budget is spent over
        if not 1 <= crops <= length:
            raise UsageError(f"method holov: crops={crops} must be in 1..{length}")
        if self.paper and geometry.crops > 1:
            raise UsageError("method holov: variant=paper is defined on one square patch grid; AnyRes crops take "
                             "variant=reference (the official LLaVA-NeXT path)")
        if self.paper:
            side, most = math.isqrt(crops), min(geometry.grid_rows, geometry.grid_cols)
            if side * side != crops or side > most:
                raise UsageError(f"method holov: variant=paper needs a square number of crops of at most "
                                 f"{most}x{most}, got crops={crops}")
            if self.settings["tau"] <= 0:
                raise UsageError(f"method holov: tau={self.settings['tau']} must be positive")
            layout = spatial_crop_layout(geometry.grid_rows, geometry.grid_cols, side)
        else:
            layout = crop_layout(length, crops)
        width = max(len(r) for r in layout)
        sizes = torch.tensor([len(r) for r in layout])
        self.width = width
        self.register_buffer("sizes", sizes, persistent=False)
        self.register_buffer("members", torch.tensor([[*r] + [r[0]] * (width - len(r)) for r in layout]), persistent=False)
        self.register_buffer("valid", torch.arange(width) < sizes.unsqueeze(1), persistent=False)
        self.register_buffer("single", sizes <= 1, persistent=False)  # the official code scores these by mean attention
        slot_of_patch = {p: c * width + j for c, members in enumerate(layout) for j, p in enumerate(members)}
        self.register_buffer("slot_of_patch", torch.tensor([slot_of_patch[p] for p in range(length)]),
                             persistent=False)  # flat (crop, slot) of each raster position

    def token_scores(self, tokens: Tensor, attention: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, M, D) projected tokens and (B, C, M) attention of each crop -> holistic token scores H
        (B, C, M) and crop scores (B, C): mean H, mean attention for single-token crops."""
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
        holistic = scaled + ALPHA * gamma.unsqueeze(-1) * variance
        return holistic, torch.where(self.single, crop_mean(attention), crop_mean(holistic))

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

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        projected = for_scoring(projector(features.patches))
        attention = features.patch_attention()
        if self.geometry.crops == 1:
            return self.spend(projected, attention)
        # One budget over the image's sequence (the model's order of its crops' patches).
        length = self.geometry.tokens_per_image
        sequence = features.image_sequence
        selection = self.spend(projected.reshape(-1, length, self.geometry.llm_width)[:, sequence],
                               attention.reshape(-1, length)[:, sequence])
        selection.per_image = True
        return selection

    def spend(self, projected: Tensor, attention: Tensor) -> Selection:
        """The budget over one sequence of projected tokens (B, L, D) with their attention (B, L): the kept rows
        of `projected`, token_index the sequence position + 1 of each kept token, -1 on padding."""
        batch, crops, width = projected.shape[0], self.members.shape[0], self.width
        flat_members = self.members.reshape(1, -1).expand(batch, -1)
        crop_tokens = gather_rows(projected, flat_members).reshape(batch, crops, width, -1)
        crop_attention = attention.gather(1, flat_members).reshape(batch, crops, width)
        holistic, crop_scores = self.token_scores(crop_tokens, crop_attention)
        if self.paper:
            return self.paper_selection(projected, holistic, crop_scores)
        allocated = self.quotas(crop_scores)

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
        index = torch.where(filled, token + 1, torch.full_like(token, NO_SOURCE))
        return Selection(Stream.PROJECTED, token, index, filled=filled, projected=projected)

    def paper_quotas(self, crop_scores: Tensor) -> Tensor:
        """(B, C) quotas: floor(softmax(s / tau) * keep) capped at the crop size, then the overflow
        redistributed in proportion to w_c (M_c - q_c) for C rounds (each round fills or settles crops)."""
        weights = torch.softmax(crop_scores / self.settings["tau"], dim=-1)
        sizes = self.sizes.to(weights.dtype)
        quota = torch.minimum(torch.floor(weights * self.keep), sizes)
        for _ in range(weights.shape[-1]):
            left = self.keep - quota.sum(dim=-1, keepdim=True)
            room = weights * (sizes - quota)
            share = torch.floor(left * room / room.sum(dim=-1, keepdim=True).clamp(min=EPS))
            quota = torch.minimum(quota + share, sizes)
        return quota.to(torch.long)

    def paper_selection(self, projected: Tensor, holistic: Tensor, crop_scores: Tensor) -> Selection:
        batch, crops, width = holistic.shape
        quota = self.paper_quotas(crop_scores)
        # Rank inside each crop by H, ties to the lower member; padding members rank last.
        masked = torch.where(self.valid, holistic, torch.full_like(holistic, -torch.inf))
        ahead = (masked.unsqueeze(-1) > masked.unsqueeze(-2)) | (
            (masked.unsqueeze(-1) == masked.unsqueeze(-2)) & torch.ones(width, width, dtype=torch.bool,
                                                                         device=holistic.device).triu(1))
        rank = ahead.sum(dim=-2)
        chosen = (rank < quota.unsqueeze(-1)) & self.valid  # (B, C, M)

        num_patches = projected.shape[1]
        chosen = chosen.reshape(batch, -1)[:, self.slot_of_patch]  # back to raster order, (B, N)
        scores = holistic.reshape(batch, -1)[:, self.slot_of_patch]

        # Shortfall: the highest-H tokens not yet chosen, as many as keep - sum(quota).
        shortfall = self.keep - quota.sum(dim=-1, keepdim=True)
        order = top_indices(torch.where(chosen, torch.full_like(scores, -torch.inf), scores), num_patches)
        place = smallest_indices(order.to(torch.float32), num_patches)  # rank of each patch in `order`
        chosen = chosen | (place < shortfall)
        positions = torch.arange(num_patches, device=projected.device)
        kept = smallest_indices(torch.where(chosen, positions, positions + num_patches).to(torch.float32), self.keep)
        return Selection(Stream.PROJECTED, kept, kept + 1, projected=projected)
