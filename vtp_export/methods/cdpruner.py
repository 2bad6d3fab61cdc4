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
The kernel's rank is at most the LLM width D, and the greedy gains reach zero (NaN picks in the official
code) after that many picks, so keep is limited to D (4096 for LLaVA-1.5: never binding).
"""

import torch
from torch import Tensor, nn

from vtp_export.errors import UsageError
from vtp_export.methods import METHODS
from vtp_export.methods.base import PruningMethod, VisionFeatures
from vtp_export.methods.ops import gather_rows, sorted_ascending
from vtp_export.models import Geometry


def unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


@METHODS.register("cdpruner")
class CDPruner(PruningMethod):
    name = "cdpruner"
    summary = "conditional DPP (similarity x question relevance), greedy MAP, raster order"
    reference = "Theia-4869/CDPruner@9541616 llava/model/llava_arch.py::encode_images"
    uses_attention = False
    projects_all_tokens = True
    text_conditioned = True

    @classmethod
    def output_tokens(cls, geometry: Geometry, keep: int | None) -> int:
        keep = super().output_tokens(geometry, keep)
        if keep > geometry.llm_width:
            raise UsageError(f"--keep {keep} is out of range for cdpruner: its kernel has rank <= the LLM width "
                             f"{geometry.llm_width}, use 1..{geometry.llm_width}")
        return keep

    def forward(self, features: VisionFeatures, projector: nn.Module) -> tuple[Tensor, Tensor]:
        projected = projector(features.patches)
        normalised = unit(projected).float()
        similarity = normalised @ normalised.transpose(1, 2)  # (B, N, N)
        relevance = -(unit(features.clip_patch_embeds.float()) @ unit(features.text_embeds.float()).unsqueeze(-1))
        relevance = relevance.squeeze(-1)
        low, high = relevance.min(dim=-1, keepdim=True).values, relevance.max(dim=-1, keepdim=True).values
        relevance = (relevance - low + 1e-6) / (high - low)
        kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)

        steps = torch.arange(self.keep, device=kernel.device)
        positions = torch.arange(self.geometry.num_patches, device=kernel.device)
        rows = torch.zeros_like(kernel[:, :self.keep])  # (B, keep, N); shaped from a tensor: batch may be dynamic
        # The official di2s, diag(L): masked sum, exact, where torch.diagonal exports to shape-valued EyeLike.
        gains = (kernel * torch.eye(self.geometry.num_patches, device=kernel.device)).sum(dim=-1)
        picks = []
        for i in range(self.keep):
            pick = gains.argmax(dim=-1, keepdim=True)  # (B, 1)
            picks.append(pick)
            earlier = rows.gather(2, pick.unsqueeze(1).expand(-1, self.keep, -1))  # (B, keep, 1): rows t at pick
            row = (gather_rows(kernel, pick) - earlier.transpose(1, 2) @ rows) / gains.gather(1, pick).sqrt().unsqueeze(-1)
            row = row.squeeze(1)
            rows = rows + (steps == i).to(kernel.dtype).view(1, -1, 1) * row.unsqueeze(1)
            gains = (gains - row.square()).masked_fill(positions == pick, -torch.inf)
        kept = sorted_ascending(torch.cat(picks, dim=1))
        return gather_rows(projected, kept), kept + 1
