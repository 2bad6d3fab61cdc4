"""The ground contract: the vocabulary that models, towers, methods and weights share.

It imports nothing of the project (tests/test_imports.py checks that every import points down the floors).
Records only: what a tower hands to a pruning method (VisionFeatures), what a method hands back (Selection),
the static sizes of an export (Geometry), where weights come from (WeightsSource), what goes into the graph
(VisionStack, ClipText). torch is imported for type hints alone, so the torch-free runtime can import it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:
    from torch import Tensor, nn

TENSORRT_MAX_TOPK_K = 3840  # TopK's largest K in TensorRT 8.5 and 10.x: no graph sorts more tokens

# token_index value of an output slot that has no single source token (padding, or a merge of many).
NO_SOURCE = -1


class Signal(enum.Enum):
    """What a tower can expose to pruning methods besides its patch features."""

    CLS_ATTENTION = "the CLS token's attention row"
    KEYS = "the feature layer's keys"
    NEXT_LAYER = "the next layer's CLS attention"
    CLIP_TEXT = "CLIP's text tower and joint embedding space"
    # The runtime's mean of the LLM's input embeddings over the prompt's text tokens (OpenVINO GenAI's CDPruner
    # for the Qwen family): a graph input like CLIP's text embedding, but computed from the LLM's embedding table.
    PROMPT_EMBEDS = "the prompt's mean LLM input embedding"
    PATCH_SCORES = "an attention score per token"
    TEMPORAL_GROUPS = "a video's temporal groups (--frames)"


@dataclass(frozen=True)
class Geometry:
    """Static sizes of the exported vision graph, all derived from the checkpoint's config and the export's
    model options (LLaVA-NeXT's tile grid, the Qwen models' image size and frames)."""

    image_height: int  # pixels of one crop as the tower takes it
    image_width: int
    grid_rows: int  # tokens of one crop that methods see: grid_rows x grid_cols, raster order
    grid_cols: int
    cls_token: bool  # the tower's sequence starts with a CLS token (position 0 of token_index)
    vision_width: int  # width of the features methods see before the projector
    num_heads: int
    head_dim: int
    llm_width: int
    feature_layer: int  # encoder layer whose output feeds the projector
    crops: int = 1  # crops per image through the tower: LLaVA-NeXT's base image + R x C tiles
    tile_rows: int = 0
    tile_cols: int = 0
    # Frames per video (the Qwen models' --frames F): each pair of frames is one temporal patch through the tower,
    # so a video is F / 2 temporal groups, laid out as crops (crops = F / 2). 0: one still image per graph input.
    frames: int = 0

    @property
    def num_patches(self) -> int:
        """N, the patch tokens of one crop."""
        return self.grid_rows * self.grid_cols

    @property
    def sequence_length(self) -> int:
        return self.num_patches + int(self.cls_token)

    @property
    def tokens_per_image(self) -> int:
        """What the LLM receives per image without pruning."""
        return self.crops * self.num_patches

    @property
    def crop_name(self) -> str:
        """What an image's crops are called in messages."""
        return "temporal groups" if self.frames else "crops"

    @property
    def grid(self) -> int:
        """Side of a square token grid (the CLIP towers'; only their code asks)."""
        if self.grid_rows != self.grid_cols:
            raise ValueError(f"a square token grid was assumed, the export has {self.grid_rows}x{self.grid_cols}")
        return self.grid_rows


@dataclass
class VisionFeatures:
    """What the tower's scoring layer hands to a pruning method (one crop per batch row). Only the signals
    the method requires (PruningMethod.requires) are computed; the rest stay None."""

    hidden: Tensor  # (B, [CLS] + N, C): feature-layer output, CLS first where the tower has one
    cls_attention: Tensor | None = None  # (B, H, 1+N) float32: the CLS row of the feature layer's softmax attention
    keys: Tensor | None = None  # (B, H, 1+N, d_h): the feature layer's k_proj output (bias included, unscaled)
    # The next layer's q_proj/k_proj on layer_norm1(hidden) taken as one full-width head (PruMerge):
    next_cls_attention: Tensor | None = None  # (B, 1+N) float32: softmax(q_cls . K^T / sqrt(C))
    next_keys: Tensor | None = None  # (B, 1+N, C)
    # Text-conditioned methods: CLIP's joint embedding space.
    clip_patch_embeds: Tensor | None = None  # (B, N, P): visual_projection(post_layernorm(patches)), unnormalised
    text_embeds: Tensor | None = None  # (B, P): CLIP text tower + text_projection of the question, unnormalised;
    # (B, D_llm) with Signal.PROMPT_EMBEDS: the mean LLM input embedding of the prompt's text tokens
    # Towers without a CLS token: the attention each token receives (Qwen2.5-VL), float32.
    received_attention: Tensor | None = None  # (B, N)
    cls_token: bool = True
    # Several crops per image (LLaVA-NeXT's tiles, a video's temporal groups): for each position of the image's one
    # token sequence, the flat index crop * N + patch into the crops' patches (the model's layout; methods with one
    # budget per image read it).
    image_sequence: Tensor | None = None  # (crops * N,) int64
    # Towers that feed the LLM several feature levels (Qwen3-VL's DeepStack): each level's hidden states laid out
    # like `hidden`; the graph applies the method's selection to every level and projects each with its own merger.
    levels: tuple[Tensor, ...] = ()

    @cached_property
    def patches(self) -> Tensor:
        """(B, N, C) the patch tokens, raster order: the projector's input stream (computed once per graph)."""
        return self.hidden[:, 1:] if self.cls_token else self.hidden

    def patch_attention(self) -> Tensor:
        """(B, N) float32 attention score of each patch: the CLS row (mean over heads), or for towers without a
        CLS token the attention each token receives."""
        if self.cls_attention is not None:
            return self.cls_attention[:, :, 1:].mean(dim=1)
        assert self.received_attention is not None
        return self.received_attention


class MethodRequirements(Protocol):
    """What models and towers read of a pruning method (methods/base.py PruningMethod): whether a tower serves it
    and which signals to compute for it."""

    name: str
    requires: frozenset[Signal]
    unsupported_reason: str


class Stream(enum.Enum):
    """The token stream a selection's source rows index, and which stream its scores read."""

    PATCHES = "the projector's input (patch tokens; Qwen: merged units)"
    SEQUENCE = "the tower's sequence with its CLS token first, before the projector"
    PROJECTED = "the projector's output (the LLM-space tokens the method scored)"


@dataclass
class NeighbourMerge:
    """PruMerge: each anchor plus the sum of its neighbours weighted per source token, then one extra token
    summing the weighted pruned tokens."""

    weights: Tensor  # (B, N) weight of each source token
    neighbours: Tensor  # (B, A * J) J neighbour rows of each anchor, anchor by anchor
    count: int  # J
    pruned: Tensor  # (B, N - A) rows summed into the extra token


@dataclass
class ClusterMerge:
    """VisionZip: after the anchors, contextual tokens = each target row plus the mean of the rows assigned to it."""

    remaining: Tensor  # (B, R) the rows not taken as anchors, ascending
    targets: Tensor  # (T,) positions in `remaining` of the cluster targets
    members: Tensor  # (M,) positions in `remaining` of the merged rows
    assignment: Tensor  # (B, M, T) one-hot cluster of each member
    counts: Tensor  # (B, T, 1) members per cluster, at least 1


@dataclass
class MeanOfRest:
    """TRIM: a table of the anchors and one token averaging the rows marked in `rest`; slot j takes table row
    slot_rows[j]."""

    rest: Tensor  # (B, N) 1 for rows averaged into the extra token, else 0
    slot_rows: Tensor  # (B, K) row of the (anchors, mean) table each output slot takes


Merge = NeighbourMerge | ClusterMerge | MeanOfRest


@dataclass
class Selection:
    """What a pruning method decides, per batch row (one crop): which rows of `stream` survive and how merged
    tokens are formed. The vision graph applies it to every stream the model emits (the projector's input
    today), projects, zeroes unfilled slots, and lays the crops out as the model does."""

    stream: Stream
    source: Tensor | None  # (B, A) rows of the stream each slot starts from, in output order; None: all rows
    token_index: Tensor  # (B, K) encoder position of each slot's source (CLS 0, patches 1..N), NO_SOURCE for none
    merge: Merge | None = None
    filled: Tensor | None = None  # (B, K) bool: slots holding a token; the others are zero after projection
    num_valid: Tensor | None = None  # (B,) data-dependent counts: real tokens fill the first slots
    projected: Tensor | None = None  # Stream.PROJECTED: the projector outputs the method scored, (B, L, D)
    # Multi-crop layout of each slot: 0 for tokens placed by their source patch, g >= 1 for tokens placed after
    # them, group by group, tile by tile (VisionZip's CLS and contextual tokens). None: all 0.
    slot_groups: Tensor | None = None  # (K,)
    # True where the method spent one budget over the image's whole sequence (features.image_sequence): source
    # and token_index then count positions of that sequence (1-based), not of a crop.
    per_image: bool = False


@dataclass(frozen=True)
class RandomWeights:
    seed: int
    kind: ClassVar[str] = "random"

    def describe(self) -> str:
        return f"random init (seed {self.seed})"

    def as_record(self) -> dict:
        return {"kind": self.kind, "seed": self.seed}


@dataclass(frozen=True)
class WeightsFolder:
    path: Path
    kind: ClassVar[str] = "folder"

    def describe(self) -> str:
        return str(self.path)

    def as_record(self) -> dict:
        return {"kind": self.kind, "path": str(self.path)}


WeightsSource = RandomWeights | WeightsFolder


def weights_from_record(data: dict) -> WeightsSource:
    """The inverse of as_record; KeyError/ValueError on anything else (records turn them into one line)."""
    kind = data["kind"]
    if kind == RandomWeights.kind:
        return RandomWeights(int(data["seed"]))
    if kind == WeightsFolder.kind:
        return WeightsFolder(Path(data["path"]))
    raise ValueError(f"unknown weights kind {kind!r}")


@dataclass
class ClipText:
    """What text-conditioned methods add from the CLIP model: its text tower with projection, and the
    visual projection into the same joint space (a LLaVA checkpoint carries neither)."""

    config: Any  # transformers.CLIPConfig
    text: nn.Module  # transformers.CLIPTextModelWithProjection
    visual_projection: nn.Linear
    source: WeightsSource

    @property
    def max_length(self) -> int:
        return self.config.text_config.max_position_embeddings

    @property
    def vocab_size(self) -> int:
        return self.config.text_config.vocab_size


@dataclass
class VisionStack:
    """The part of a checkpoint that goes into the vision graph (CLIP's text side too, where needed)."""

    config: Any  # the HF config of the whole model
    geometry: Geometry
    tower: nn.Module
    projector: nn.Module
    source: WeightsSource
    clip: ClipText | None = field(default=None)

    def parameter_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for m in (self.tower, self.projector) for p in m.parameters())
