"""EVS, Efficient Video Sampling (NVIDIA, arXiv 2510.14624): a video's temporally redundant tokens pruned.

Reference: vllm-project/vllm@926c71f vllm/multimodal/evs.py compute_retention_mask (applied to the merger's video
embeddings of Qwen2.5-VL; sglang's multimodal/evs is the same code). Parity: tests/methods/test_evs.py.

Each merged token's dissimilarity is 1 - cosine to the token at the same position in the previous temporal group
(the projected tokens, as vLLM scores the merger's output); the first group scores 255, so it is kept whole; one
stable descending sort over the whole video keeps the K most dissimilar, and the kept tokens stay in video order
(group by group, raster order within a group: vLLM's retention mask).

Static form: K is fixed at export (vLLM derives it from a pruning rate q as max(M, int(G * M * (1 - q)))), so each
group's count is data-dependent but the video's is not; K >= M keeps the first group whole as vLLM's floor does.
One budget over the video's groups (PruningMethod.temporal): video exports only.
"""

import torch
from torch import nn

from vtp_export.contract import TENSORRT_MAX_TOPK_K, Geometry, Selection, Signal, Stream, VisionFeatures
from vtp_export.errors import UsageError
from vtp_export.methods.base import METHODS, PruningMethod
from vtp_export.ops import for_scoring, sorted_ascending, top_indices

FIRST_GROUP_SCORE = 255.0  # vLLM's score of the first group's tokens: above any 1 - cosine (at most 2)
COSINE_EPS = 1e-8  # torch.nn.functional.cosine_similarity's default eps


@METHODS.register("evs")
class EfficientVideoSampling(PruningMethod):
    name = "evs"
    summary = ("video: the first temporal group whole, then the tokens least like the same position one group "
               "earlier (1 - cosine), one TopK over the video, video order")
    reference = "vllm-project/vllm@926c71f vllm/multimodal/evs.py compute_retention_mask (arXiv 2510.14624)"
    requires = frozenset({Signal.TEMPORAL_GROUPS})
    unsupported_reason = "it compares each token with the same position one temporal group earlier"
    projects_all_tokens = True
    temporal = True

    @classmethod
    def output_tokens(cls, geometry: Geometry, keep: int | None) -> int:
        """One budget over the video: M..G*M-1 (the first group whole)."""
        groups, tokens = geometry.crops, geometry.num_patches
        if not geometry.frames or groups < 2:
            raise UsageError("method evs compares a video's temporal groups: export with --frames F, F >= 4 (at "
                             "least two groups of two frames)")
        if keep is None or not tokens <= keep < groups * tokens:
            raise UsageError(f"--keep {keep} is out of range for evs: it keeps the first group whole, so use "
                             f"{tokens}..{groups * tokens - 1} (of {groups * tokens} tokens per video)")
        if groups * tokens > TENSORRT_MAX_TOPK_K:
            raise UsageError(f"method evs sorts the video's {groups * tokens} tokens with TensorRT's TopK, which takes "
                             f"fewer than {TENSORRT_MAX_TOPK_K}: use fewer frames or a smaller --image-size")
        return keep

    @property
    def tokens_per_image(self) -> int:
        return self.keep

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        groups, tokens = self.geometry.crops, self.geometry.num_patches
        projected = for_scoring(projector(features.patches))  # (B x groups, M, D)
        video = projected.reshape(-1, groups, tokens, projected.shape[-1])
        later, earlier = video[:, 1:], video[:, :-1]
        norms = later.norm(dim=-1).clamp(min=COSINE_EPS) * earlier.norm(dim=-1).clamp(min=COSINE_EPS)
        dissimilarity = 1 - (later * earlier).sum(dim=-1) / norms  # (B, G - 1, M)
        first = torch.full_like(dissimilarity[:, :1], FIRST_GROUP_SCORE)
        scores = torch.cat([first, dissimilarity], dim=1).flatten(1)  # (B, G * M), video order
        kept = sorted_ascending(top_indices(scores, self.keep))
        return Selection(Stream.PROJECTED, kept, kept + 1, projected=video.flatten(1, 2), per_image=True)
