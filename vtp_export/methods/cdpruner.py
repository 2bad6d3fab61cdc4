"""CDPruner: greedy MAP inference of a conditional DPP whose kernel weighs token similarity by relevance
to the question.

Reference: Theia-4869/CDPruner@9541616 llava/model/llava_arch.py::encode_images and
multimodal_encoder/clip_encoder.py (methods-spec.md, "CDPruner"). Parity: tests/methods/test_parity.py::test_cdpruner.

Kernel L = diag(rel) S diag(rel): S = cosine of the projected (LLM-space) tokens, rel = min-max normalised
negative cosine between CLIP's patch embeddings and the question's text embedding. The official code
min-max normalises over the whole batch tensor; here it is per image, which equals the official run at
batch 1 (how it is evaluated) and keeps batch items independent. One 77-token text segment: the official
code averages the relevance over 77-token segments of longer questions.
The greedy loop has a fixed length (keep), so it is unrolled with a (B, keep, N) buffer of Cholesky rows.

Exhausted kernel (a stated rule; the official loop has none): the residual gains only shrink, and once
the best one is at most EXHAUSTED_GAIN x the kernel's largest diagonal entry, every remaining token is
redundant with the picked set: the float32 Cholesky update cannot rank gains that small (it subtracts
from the diagonal, so its absolute error grows to ~1e-5 of the diagonal), and the official loop picks by
rounding noise there; once a gain turns negative its gains are all NaN and it repeats the first patch.
Here the remaining slots take the lowest unpicked indices instead (distinct tokens). The kernel's rank is
at most the LLM width D, so this always happens after D picks; keep is therefore limited to D (4096 for
LLaVA-1.5: never binding), and near-duplicate tokens (flat image regions) reach it earlier.
"""

import torch
from torch import Tensor, nn

from vtp_export.errors import UsageError
from vtp_export.methods import METHODS
from vtp_export.methods.base import PruningMethod, VisionFeatures
from vtp_export.methods.ops import for_scoring, gather_rows, sorted_ascending
from vtp_export.models.base import Geometry, Signal

# Relative gain below which the kernel counts as exhausted: 30x the worst-case float32 error of the
# Cholesky gains after 576 steps (576 x 2**-24 = 3.4e-5 of the diagonal). tests/methods/test_stability.py
# checks that float32 picks equal float64 picks on the tiny model, where the kernel's rank (64) is reached.
EXHAUSTED_GAIN = 1e-3


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

    def select(self, features: VisionFeatures, projector: nn.Module) -> tuple[Tensor, Tensor]:
        projected = projector(features.patches)
        normalised = for_scoring(unit(projected))
        similarity = normalised @ normalised.transpose(1, 2)  # (B, N, N)
        relevance = -(unit(for_scoring(features.clip_patch_embeds)) @ unit(for_scoring(features.text_embeds)).unsqueeze(-1))
        relevance = relevance.squeeze(-1)
        low, high = image_min_max(relevance, self.geometry.crops)
        relevance = (relevance - low + 1e-6) / (high - low)
        kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)

        steps = torch.arange(self.keep, device=kernel.device)
        positions = torch.arange(self.geometry.num_patches, device=kernel.device)
        rows = torch.zeros_like(kernel[:, :self.keep])  # (B, keep, N); shaped from a tensor: batch may be dynamic
        # The official di2s, diag(L) = rel_i^2 S_ii, from the factors: torch.diagonal exports to a shape-valued
        # EyeLike, and a masked sum with torch.eye to a uint16 Equal that TensorRT's parser warns about.
        gains = relevance.square() * normalised.square().sum(dim=-1)
        floor = gains.amax(dim=-1, keepdim=True) * EXHAUSTED_GAIN
        free = torch.ones_like(gains)  # 1 where a token is not picked yet
        picks = []
        for i in range(self.keep):
            best = gains.max(dim=-1, keepdim=True)
            exhausted = best.values <= floor  # (B, 1)
            pick = torch.where(exhausted, free.argmax(dim=-1, keepdim=True), best.indices)
            picks.append(pick)
            earlier = rows.gather(2, pick.unsqueeze(1).expand(-1, self.keep, -1))  # (B, keep, 1): rows t at pick
            norm = gains.gather(1, pick).clamp(min=torch.finfo(kernel.dtype).tiny).sqrt().unsqueeze(-1)
            row = ((gather_rows(kernel, pick) - earlier.transpose(1, 2) @ rows) / norm).squeeze(1)
            row = row.masked_fill(exhausted, 0.0)  # a filled slot adds no direction
            rows = rows + (steps == i).to(kernel.dtype).view(1, -1, 1) * row.unsqueeze(1)
            taken = positions == pick
            gains = (gains - row.square()).masked_fill(taken, -torch.inf)
            free = free.masked_fill(taken, 0.0)
        kept = sorted_ascending(torch.cat(picks, dim=1))
        return gather_rows(projected, kept), kept + 1
