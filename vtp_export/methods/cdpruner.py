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

Qwen form (CDPrunerPromptRelevance, chosen by for_signals on models exposing Signal.PROMPT_EMBEDS: Qwen2.5-VL,
Qwen3-VL). The paper's Qwen code is unreleased; this is OpenVINO GenAI's, read at openvinotoolkit/openvino.genai
@da1db864d2bc1a265e9a036f5b57ef13f0e86c2c (src/cpp/src/visual_language/cdpruner/, vision_token_pruning_processor.cpp):
- text: VisionTokenPruningProcessor::extract_text_features averages the LLM input embeddings (the embedding table's
  rows, before any image is merged in) of the prompt's "instruction tokens": every token of the tokenized, templated
  prompt outside the vision regions, i.e. all but <|vision_start|>, what lies up to <|vision_end|>, <|vision_end|>
  and the image/video pads. The chat template's special tokens and text (<|im_start|>, roles, Qwen2.5-VL's default
  system turn, the newlines) count; one (1, D_llm) mean per prompt, unnormalised. The runtime computes it
  (Pipeline.prompt_embeds) and feeds it as text_embeds (B, D_llm), one row per image of the prompt.
- relevance (conditional_kernel.cpp, create_conditional_kernel_model: the OV-model path that runs, its CPU fallback
  computes the same terms): cosine of each merged token (the merger's output) with that mean, both L2-normalised
  as x / sqrt(|x|^2 + 1e-6) (NormalizeL2, eps added), mean over the one text row, not negated
  (use_negative_relevance is false for the Qwen family, true for CLIP/LLaVA), min-max normalised per image as
  (r - min) / (max - min + 1e-6). S = the same eps-normalised merged tokens' Gram matrix.
- kernel: OpenVINO blends (1 - w) S + w diag(r) S diag(r) with the relevance_weight w (GenerationConfig default
  0.5); here w = 1, the paper's L = diag(r) S diag(r) (stated deviation from OpenVINO's default, the paper's form).
- greedy MAP (fast_dpp.cpp, select_single_batch): the paper's incremental Cholesky with sqrt(di2s + 1e-6) in its
  divisor; here the residual-norm form and exhausted-kernel rule above. The picks are sorted ascending (raster).
- split threshold: OpenVINO's Config default split_threshold = 1 (env CDPRUNER_SPLIT_THRESHOLD) splits each
  image's tokens into two raster halves, each running its own DPP for half the keep; here split threshold 0, the
  paper's single DPP over all of an image's tokens (OpenVINO with CDPRUNER_SPLIT_THRESHOLD=0). Each image is its
  own DPP as with OpenVINO's frame chunking (enable_frame_chunking, default true). pruning_ratio (percent pruned,
  keep = round(N x (1 - ratio / 100))) is --keep here.
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
# OpenVINO GenAI CDPruner's Config::numerical_threshold: the epsilon of its L2 and min-max normalisations.
OPENVINO_EPSILON = 1e-6


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
    unsupported_reason = ("its relevance is CLIP text-image similarity (LLaVA), or in OpenVINO GenAI's form for the "
                          "Qwen family the prompt's mean LLM input embedding")
    projects_all_tokens = True

    @classmethod
    def output_tokens(cls, geometry: Geometry, keep: int | None) -> int:
        keep = super().output_tokens(geometry, keep)
        if keep > geometry.llm_width:
            raise UsageError(f"--keep {keep} is out of range for cdpruner: its kernel has rank <= the LLM width "
                             f"{geometry.llm_width}, use 1..{geometry.llm_width}")
        return keep

    @classmethod
    def for_signals(cls, signals: frozenset[Signal]) -> type[PruningMethod]:
        """The Qwen form (CDPrunerPromptRelevance) on models without CLIP's text side that expose the prompt's
        LLM embedding; this, the paper's LLaVA form, elsewhere (and where neither applies, for the refusal)."""
        if Signal.CLIP_TEXT not in signals and Signal.PROMPT_EMBEDS in signals:
            return CDPrunerPromptRelevance
        return cls

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        projected = projector(features.patches)
        normalised = for_scoring(unit(projected))
        relevance = -(unit(for_scoring(features.clip_patch_embeds)) @ unit(for_scoring(features.text_embeds)).unsqueeze(-1))
        relevance = relevance.squeeze(-1)
        low, high = image_min_max(relevance, self.geometry.crops)
        relevance = (relevance - low + 1e-6) / (high - low)
        kept = greedy_map(relevance.unsqueeze(-1) * normalised, self.keep, self.geometry.num_patches)
        return Selection(Stream.PROJECTED, kept, kept + 1, projected=projected)


def greedy_map(residual: Tensor, keep: int, tokens: int) -> Tensor:
    """(B, keep) ascending picks of the greedy MAP of the DPP whose kernel is L = B B^T, rows b_j = the (B, N, D)
    residual's (N = tokens): each pick the row with the largest residual norm, its direction then removed from all
    rows (modified Gram-Schmidt), the exhausted-kernel rule filling the slots once the gains are at rounding level."""
    gains = residual.square().sum(dim=-1)  # the official di2s: diag(L) = rel_j^2 S_jj
    floor = gains.amax(dim=-1, keepdim=True) * EXHAUSTED_GAIN
    positions = torch.arange(tokens, device=gains.device)
    free = torch.ones_like(gains)  # 1 where a token is not picked yet
    picks = []
    for _ in range(keep):
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
    return sorted_ascending(torch.cat(picks, dim=1))


def unit_with_epsilon(x: Tensor) -> Tensor:
    """x / sqrt(|x|^2 + 1e-6): OpenVINO's NormalizeL2 with eps 1e-6 added (CDPruner's numerical_threshold)."""
    return x * torch.rsqrt(x.square().sum(dim=-1, keepdim=True) + OPENVINO_EPSILON)


class CDPrunerPromptRelevance(CDPruner):
    """cdpruner's form for the Qwen family (Qwen2.5-VL, Qwen3-VL), as OpenVINO GenAI runs it: relevance is the
    cosine of each merged token (the merger's LLM-space output) with the mean LLM input embedding of the prompt's
    text tokens (the text_embeds graph input, (B, D_llm), which the runtime computes), min-max normalised as
    (r - min) / (max - min + 1e-6), not negated; then the same kernel and greedy MAP as the LLaVA form."""

    summary = "conditional DPP (similarity x relevance to the prompt's mean LLM embedding), greedy MAP, raster order"
    reference = ("openvinotoolkit/openvino.genai@da1db864 src/cpp/src/visual_language/cdpruner/"
                 "conditional_kernel.cpp::create_conditional_kernel_model, fast_dpp.cpp::select_single_batch")
    requires = frozenset({Signal.PROMPT_EMBEDS})
    unsupported_reason = ""

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        projected = projector(features.patches)
        normalised = unit_with_epsilon(for_scoring(projected))
        relevance = (normalised @ unit_with_epsilon(for_scoring(features.text_embeds)).unsqueeze(-1)).squeeze(-1)
        low, high = relevance.amin(dim=-1, keepdim=True), relevance.amax(dim=-1, keepdim=True)
        relevance = (relevance - low) / (high - low + OPENVINO_EPSILON)
        kept = greedy_map(relevance.unsqueeze(-1) * normalised, self.keep, self.geometry.num_patches)
        return Selection(Stream.PROJECTED, kept, kept + 1, projected=projected)
