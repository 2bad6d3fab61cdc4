"""What every pruning method is: a static-shape torch module from vision features to K projected tokens."""

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vtp_export.errors import UsageError
from vtp_export.graph_io import VISION_OUTPUTS
from vtp_export.methods.ops import gather_rows, smallest_indices
from vtp_export.models.base import Geometry, Signal


@dataclass
class VisionFeatures:
    """What the tower's feature layer hands to a pruning method (one crop per batch row). Only the signals
    the method requires (PruningMethod.requires) are computed; the rest stay None."""

    hidden: Tensor  # (B, [CLS] + N, C): feature-layer output, CLS first where the tower has one
    cls_attention: Tensor | None = None  # (B, H, 1+N) float32: the CLS row of the feature layer's softmax attention
    keys: Tensor | None = None  # (B, H, 1+N, d_h): the feature layer's k_proj output (bias included, unscaled)
    # The next layer's q_proj/k_proj on layer_norm1(hidden) taken as one full-width head (PruMerge):
    next_cls_attention: Tensor | None = None  # (B, 1+N) float32: softmax(q_cls . K^T / sqrt(C))
    next_keys: Tensor | None = None  # (B, 1+N, C)
    # Text-conditioned methods: CLIP's joint embedding space.
    clip_patch_embeds: Tensor | None = None  # (B, N, P): visual_projection(post_layernorm(patches)), unnormalised
    text_embeds: Tensor | None = None  # (B, P): CLIP text tower + text_projection of the question, unnormalised
    # Towers without a CLS token: the attention each token receives (Qwen2.5-VL), float32.
    received_attention: Tensor | None = None  # (B, N)
    cls_token: bool = True

    @property
    def patches(self) -> Tensor:
        """(B, N, C) the patch tokens, raster order."""
        return self.hidden[:, 1:] if self.cls_token else self.hidden

    def patch_attention(self) -> Tensor:
        """(B, N) float32 attention score of each patch: the CLS row (mean over heads), or for towers without a
        CLS token the attention each token receives."""
        if self.cls_attention is not None:
            return self.cls_attention[:, :, 1:].mean(dim=1)
        assert self.received_attention is not None
        return self.received_attention


INT64_LIMIT = 2**63


@dataclass(frozen=True)
class MethodOption:
    name: str
    type: type  # int, float or str
    default: Any  # None: derived from keep, as `help` says
    help: str
    choices: tuple[Any, ...] | None = None

    def parse(self, method: str, text: str) -> Any:
        try:
            value = self.type(text)
        except ValueError:
            raise UsageError(f"method {method}: option {self.name}={text!r} is not a {self.type.__name__}") from None
        if self.type is float and not math.isfinite(value):
            raise UsageError(f"method {method}: option {self.name}={text!r} is not a finite number")
        if self.type is int and not -INT64_LIMIT <= value < INT64_LIMIT:
            raise UsageError(f"method {method}: option {self.name}={text!r} is out of range (64-bit integers)")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise UsageError(f"method {method}: option {self.name}={text!r} is not one of {allowed}")
        return value


class PruningMethod(nn.Module):
    """Maps VisionFeatures to (image_embeds (B, K, D_llm), token_index (B, K) int64) with static shapes.

    token_index holds the encoder-sequence position of each output token's source: CLS = 0, patches 1..N,
    the anchor for a merged token, -1 where there is none (padding or a token merged from many).
    A method with a data-dependent count also returns num_valid (B,): its real tokens fill the first slots.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    reference: ClassVar[str]  # official repository @ commit, file
    options: ClassVar[tuple[MethodOption, ...]] = ()
    # What the method reads besides the patch features; a model whose tower lacks one refuses the method.
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.CLS_ATTENTION, Signal.KEYS})
    unsupported_reason: ClassVar[str] = ""  # said after the refusal, e.g. which paper form needs what
    projects_all_tokens: ClassVar[bool] = False  # selects on projector outputs, so projects all N tokens first
    # False where float noise between backends legitimately changes the kept set (chaotic tie structure):
    # verification then measures set overlap instead of requiring identical indices.
    exact_selection: ClassVar[bool] = True

    # Needs text_embeds, a graph input the CLIP text graph computes from the question (set from `requires`).
    text_conditioned: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.text_conditioned = Signal.CLIP_TEXT in cls.requires

    def __init__(self, geometry: Geometry, keep: int, **options: Any) -> None:
        super().__init__()
        self.geometry = geometry
        self.keep = keep
        self.settings = {o.name: options.get(o.name, o.default) for o in self.options}
        if geometry.crops > 1:
            self.register_buffer("raster_keys", tile_raster_keys(geometry), persistent=False)

    @classmethod
    def output_tokens(cls, geometry: Geometry, keep: int | None) -> int:
        """The tokens the method keeps of each crop, after validating the requested per-image keep: 1..N-1 for
        one crop; for C crops (LLaVA-NeXT) a multiple of C whose share of each crop is 1..N-1."""
        n, crops = geometry.num_patches, geometry.crops
        if keep is None:
            raise UsageError(f"method {cls.name} needs --keep ({crops}..{crops * (n - 1)}"
                             + (f", a multiple of the {crops} crops)" if crops > 1 else ")"))
        if crops > 1 and keep % crops:
            low, high = keep // crops * crops, (keep // crops + 1) * crops
            nearest = " or ".join(str(k) for k in (low, high) if crops <= k <= crops * (n - 1))
            raise UsageError(f"--keep {keep} is not a multiple of the {crops} crops {cls.name} splits it over "
                             f"(top-k per crop): use {nearest}")
        if not 1 <= keep // crops < n:
            raise UsageError(f"--keep {keep} is out of range for {cls.name}: the model has {crops * n} tokens per image"
                             f"{f' in {crops} crops' if crops > 1 else ''}, use {crops}..{crops * (n - 1)}")
        return keep // crops

    @property
    def tokens_per_image(self) -> int:
        """K, the visual tokens the LLM receives per image: the per-crop keep over all crops."""
        return self.keep * self.geometry.crops

    @classmethod
    def parse_options(cls, raw: dict[str, str]) -> dict[str, Any]:
        known = {o.name: o for o in cls.options}
        parsed = {}
        for key, text in raw.items():
            if key not in known:
                names = ", ".join(known) or "none"
                raise UsageError(f"method {cls.name} has no option {key!r} (options: {names})")
            parsed[key] = known[key].parse(cls.name, text)
        return parsed

    @classmethod
    def create(cls, geometry: Geometry, keep: int | None, raw_options: dict[str, str]) -> "PruningMethod":
        keep = cls.output_tokens(geometry, keep)
        return cls(geometry, keep, **cls.parse_options(raw_options))

    @classmethod
    def from_record(cls, geometry: Geometry, keep: int, options: dict[str, Any]) -> "PruningMethod":
        """The method as an export recorded it: per-image keep, resolved options."""
        return cls(geometry, cls.output_tokens(geometry, keep), **options)

    @property
    def output_names(self) -> tuple[str, ...]:
        return VISION_OUTPUTS

    def forward(self, features: VisionFeatures, projector: nn.Module) -> tuple[Tensor, ...]:
        """One tensor per name in output_names, per image. `features` holds one crop per batch row (B x crops
        rows for LLaVA-NeXT's AnyRes crops, base first): the method selects in each crop, then the crops are
        laid out as one image's sequence (arrange_crops)."""
        outputs = self.select(features, projector)
        return outputs if self.geometry.crops == 1 else self.arrange_crops(outputs)

    def select(self, features: VisionFeatures, projector: nn.Module) -> tuple[Tensor, ...]:
        """The method on each batch row (one crop): (image_embeds (B', k, D), token_index (B', k)[, num_valid])."""
        raise NotImplementedError

    def tile_groups(self) -> Tensor | None:
        """(k,) the place in the tiles' layout of each of a crop's output slots: 0 (default for every slot) for
        tokens laid out in full-grid raster order of their source patch, g >= 1 for tokens laid out after
        them, group by group, tile by tile (VisionZip: its CLS and contextual tokens)."""
        return None

    def arrange_crops(self, outputs: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
        """Per-crop outputs (B x crops rows) -> one sequence per image, as the official LLaVA-NeXT paths of
        CDPruner, VisPruner and FasterVLM lay it out (methods-spec.md): the base crop's tokens as the method
        emits them, then the tiles' tokens in full-grid raster order of their source patch (tile (tr, tc),
        patch (pr, pc) at row tr*g + pr, column tc*g + pc), tokens without a single patch source (CLS, merged,
        padding) after those, tile by tile. token_index becomes crop * (N + 1) + encoder position."""
        embeds, index, *extra = outputs
        if extra:
            raise ValueError(f"{self.name}: a data-dependent token count has no multi-crop layout")
        g = self.geometry
        crops, kept, width = g.crops, index.shape[1], embeds.shape[-1]
        tiles = crops - 1
        embeds = embeds.reshape(-1, crops, kept, width)
        index = index.reshape(-1, crops, kept)
        batch = index.shape[0]
        tile_index = index[:, 1:]  # (B, T, k)
        raster = self.raster_keys.unsqueeze(0).expand(batch, -1, -1).gather(2, tile_index.clamp(min=0))
        groups = self.tile_groups()
        groups = torch.zeros(kept, device=index.device) if groups is None else groups.to(index.device).float()
        grid = g.tile_rows * g.tile_cols * g.num_patches
        slot = torch.arange(tiles * kept, device=index.device).reshape(tiles, kept).float()
        after = grid + (groups * tiles * kept).view(1, kept) + slot  # group, then tile, then slot
        keys = torch.where((tile_index >= 1) & (groups == 0), raster, after.unsqueeze(0))
        order = smallest_indices(keys.reshape(batch, tiles * kept), tiles * kept)
        tile_embeds = gather_rows(embeds[:, 1:].reshape(batch, tiles * kept, width), order)
        offsets = (torch.arange(crops, device=index.device) * (g.num_patches + 1)).view(1, crops, 1)
        index = torch.where(index >= 0, index + offsets, index)
        tile_index = index[:, 1:].reshape(batch, tiles * kept).gather(1, order)
        return torch.cat([embeds[:, 0], tile_embeds], dim=1), torch.cat([index[:, 0], tile_index], dim=1)

    def recorded_options(self) -> dict[str, Any]:
        """Options as resolved for this export (defaults filled in), for config.json."""
        return dict(self.settings)

    def variant(self) -> dict[str, Any]:
        """The resolved options that differ from what the defaults resolve to at this keep: what tells this
        export apart from the method's default one (in folder names and profile labels)."""
        defaults = type(self)(self.geometry, self.keep).recorded_options()
        return {k: v for k, v in self.recorded_options().items() if defaults.get(k) != v}


def tile_raster_keys(geometry: Geometry) -> Tensor:
    """(tiles, 1 + N) float32: the full-grid raster index of each tile's encoder position (patches 1..N;
    position 0, CLS, has none: 0 here, never used)."""
    g, cols = geometry.grid, geometry.tile_cols
    keys = torch.zeros(geometry.crops - 1, geometry.num_patches + 1)
    for tile in range(geometry.crops - 1):
        tile_row, tile_col = divmod(tile, cols)
        for patch in range(geometry.num_patches):
            row, col = divmod(patch, g)
            keys[tile, patch + 1] = (tile_row * g + row) * (cols * g) + tile_col * g + col
    return keys


def patch_positions(batch: int, count: int, device: torch.device) -> Tensor:
    """(B, count) encoder positions 1..count of the patch tokens."""
    return torch.arange(1, count + 1, device=device).unsqueeze(0).expand(batch, count)
