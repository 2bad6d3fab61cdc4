"""CDPruner: greedy MAP inference of a conditional DPP whose kernel weighs token similarity by relevance
to the question.

Reference: Theia-4869/CDPruner@9541616 llava/model/llava_arch.py::encode_images and
multimodal_encoder/clip_encoder.py (methods-spec.md, "CDPruner"). Parity: tests/methods/test_parity.py::test_cdpruner
and the shape sweep tests/methods/test_sweep.py.

Kernel L = diag(rel) S diag(rel): S = cosine of the projected (LLM-space) tokens, rel = min-max normalised
negative cosine between CLIP's patch embeddings and the question's text embedding. The official code
min-max normalises over the whole batch tensor; here it is per image, which equals the official run at
batch 1 (how it is evaluated) and keeps batch items independent. One 77-token text segment: the official
code averages the relevance over 77-token segments of longer questions.

The official greedy loop is an incremental Cholesky factorisation of L: the gain of token j after the picks
P is L_jj - L_jP L_PP^-1 L_Pj, which for L = B B^T (rows b_j = rel_j * unit(projected_j)) is the squared norm
of b_j's residual after projecting out the picked rows. The graph computes exactly that residual (modified
Gram-Schmidt over the D-dimensional rows, i.e. QR with column pivoting) instead of downdating the diagonal:
the same picks in exact arithmetic, but each gain is a sum of squares accurate to its own size, where the
official downdate subtracts from the diagonal and carries an absolute error of ~1e-6 of it in float32
(measured against float64 by tools/cdpruner_rounding.py: 3e-7 to 1.7e-6 of max diag(L) on the sweep's towers,
6e-7 on issue 18's checkpoint, 1.4e-6 on llava15-tiny). So wherever the official float32 picks are determined by the data, the graph
makes them, on any backend; where the official float32 loop is off its own float64 run (a close race in its
last picks, with gains a few times its rounding), the graph picks what the float64 run picks.

Exhausted kernel (a stated rule; the official loop has none): once the best gain is at most EXHAUSTED_GAIN x
the kernel's largest diagonal entry, it is at the official loop's rounding level, which then ranks by noise
(and once a gain turns negative, by NaN: it repeats the first patch), so what it picks is not determined by
the image. The remaining slots then take the lowest unpicked indices (distinct tokens). The kernel's rank is
at most the LLM width D, so this happens by D picks: keep is limited to D (4096 for LLaVA-1.5: never
binding), and near-duplicate tokens (flat image regions) reach it earlier. These keeps at the kernel's rank
are the only ones that are stable but not official: there is no official answer to match.
"""

import torch
from torch import Tensor, nn

from vtp_export.contract import Geometry, Selection, Signal, Stream, VisionFeatures
from vtp_export.errors import UsageError
from vtp_export.methods.base import METHODS, PruningMethod
from vtp_export.ops import for_scoring, gather_rows, sorted_ascending

# Best gain (relative to max diag(L)) at or below which the official float32 loop picks by rounding: the error of
# its downdated gains measured against float64 (3e-7 to 1.7e-6, see above). tests/methods/test_stability.py
# checks the graph's float32 picks against float64 where the kernel's rank is reached.
EXHAUSTED_GAIN = 1e-6


def unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def image_min_max(relevance: Tensor, crops: int) -> tuple[Tensor, Tensor]:
    """(B', 1) min and max of each row's image: over all of its crops together on LLaVA-NeXT (B' = B x crops
    rows, base first), as the official code min-max normalises the whole (crops, N) tensor."""
    if crops == 1:
        return relevance.min(dim=-1, keepdim=True).values, relevance.max(dim=-1, keepdim=True).values
    image = relevance.reshape(-1, crops * relevance.shape[-1])
    return (image.min(dim=-1, keepdim=True).values.repeat_interleave(crops, dim=0),
            image.max(dim=-1, keepdim=True).values.repeat_interleave(crops, dim=0))


@METHODS.register("cdpruner")
class CDPruner(PruningMethod):
    name = "cdpruner"
    summary = "conditional DPP (similarity x question relevance), greedy MAP, raster order"
    reference = "Theia-4869/CDPruner@9541616 llava/model/llava_arch.py::encode_images"
    requires = frozenset({Signal.CLIP_TEXT})
    unsupported_reason = "its relevance term is CLIP text-image similarity; its Qwen2.5-VL code is unreleased"
    projects_all_tokens = True

    @classmethod
    def output_tokens(cls, geometry: Geometry, keep: int | None) -> int:
        keep = super().output_tokens(geometry, keep)
        if keep > geometry.llm_width:
            raise UsageError(f"--keep {keep} is out of range for cdpruner: its kernel has rank <= the LLM width "
                             f"{geometry.llm_width}, use 1..{geometry.llm_width}")
        return keep

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        projected = projector(features.patches)
        normalised = for_scoring(unit(projected))
        relevance = -(unit(for_scoring(features.clip_patch_embeds)) @ unit(for_scoring(features.text_embeds)).unsqueeze(-1))
        relevance = relevance.squeeze(-1)
        low, high = image_min_max(relevance, self.geometry.crops)
        relevance = (relevance - low + 1e-6) / (high - low)

        residual = relevance.unsqueeze(-1) * normalised  # (B, N, D): rows b_j of L = B B^T, picked directions removed
        gains = residual.square().sum(dim=-1)  # the official di2s: diag(L) = rel_j^2 S_jj
        floor = gains.amax(dim=-1, keepdim=True) * EXHAUSTED_GAIN
        positions = torch.arange(self.geometry.num_patches, device=gains.device)
        free = torch.ones_like(gains)  # 1 where a token is not picked yet
        picks = []
        for _ in range(self.keep):
            best = gains.max(dim=-1, keepdim=True)
            exhausted = best.values <= floor  # (B, 1)
            pick = torch.where(exhausted, free.argmax(dim=-1, keepdim=True), best.indices)
            picks.append(pick)
            chosen = gather_rows(residual, pick)  # (B, 1, D)
            direction = chosen / best.values.clamp(min=torch.finfo(gains.dtype).tiny).sqrt().unsqueeze(-1)
            direction = direction.masked_fill(exhausted.unsqueeze(-1), 0.0)  # a filled slot adds no direction
            residual = residual - (residual @ direction.transpose(1, 2)) @ direction
            free = free.masked_fill(positions == pick, 0.0)
            gains = residual.square().sum(dim=-1).masked_fill(free == 0, -torch.inf)
        kept = sorted_ascending(torch.cat(picks, dim=1))
        return Selection(Stream.PROJECTED, kept, kept + 1, projected=projected)
