"""What every pruning method is: a static-shape torch module from vision features to K projected tokens."""

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vtp_export.errors import UsageError
from vtp_export.graph_io import VISION_OUTPUTS
from vtp_export.models import Geometry


@dataclass
class VisionFeatures:
    """What the feature layer of the vision tower hands to a pruning method."""

    hidden: Tensor  # (B, 1+N, C): feature-layer output, CLS first (LLaVA's hidden_states[-2])
    cls_attention: Tensor | None  # (B, H, 1+N) float32: the CLS row of the feature layer's softmax attention
    keys: Tensor | None  # (B, H, 1+N, d_h): the feature layer's k_proj output (bias included, unscaled)
    # The next layer's q_proj/k_proj on layer_norm1(hidden) taken as one full-width head (PruMerge):
    next_cls_attention: Tensor | None = None  # (B, 1+N) float32: softmax(q_cls . K^T / sqrt(C))
    next_keys: Tensor | None = None  # (B, 1+N, C)
    # Text-conditioned methods: CLIP's joint embedding space.
    clip_patch_embeds: Tensor | None = None  # (B, N, P): visual_projection(post_layernorm(patches)), unnormalised
    text_embeds: Tensor | None = None  # (B, P): CLIP text tower + text_projection of the question, unnormalised

    @property
    def patches(self) -> Tensor:
        return self.hidden[:, 1:]

    def patch_attention(self) -> Tensor:
        """(B, N) CLS attention to each patch, mean over heads."""
        assert self.cls_attention is not None
        return self.cls_attention[:, :, 1:].mean(dim=1)


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
    uses_attention: ClassVar[bool] = True  # needs the CLS attention row (and keys) of the feature layer
    projects_all_tokens: ClassVar[bool] = False  # selects on projector outputs, so projects all N tokens first
    uses_next_layer: ClassVar[bool] = False  # needs next_cls_attention / next_keys
    text_conditioned: ClassVar[bool] = False  # needs text_embeds (a text graph input) and clip_patch_embeds
    # False where float noise between backends legitimately changes the kept set (chaotic tie structure):
    # verification then measures set overlap instead of requiring identical indices.
    exact_selection: ClassVar[bool] = True

    def __init__(self, geometry: Geometry, keep: int, **options: Any) -> None:
        super().__init__()
        self.geometry = geometry
        self.keep = keep
        self.settings = {o.name: options.get(o.name, o.default) for o in self.options}

    @classmethod
    def output_tokens(cls, geometry: Geometry, keep: int | None) -> int:
        """K, after validating the requested keep against the model's N patch tokens."""
        n = geometry.num_patches
        if keep is None:
            raise UsageError(f"method {cls.name} needs --keep (1..{n - 1})")
        if not 1 <= keep < n:
            raise UsageError(f"--keep {keep} is out of range for {cls.name}: the model has {n} tokens, use 1..{n - 1}")
        return keep

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

    @property
    def output_names(self) -> tuple[str, ...]:
        return VISION_OUTPUTS

    def forward(self, features: VisionFeatures, projector: nn.Module) -> tuple[Tensor, ...]:
        """One tensor per name in output_names."""
        raise NotImplementedError

    def recorded_options(self) -> dict[str, Any]:
        """Options as resolved for this export (defaults filled in), for config.json."""
        return dict(self.settings)


def patch_positions(batch: int, count: int, device: torch.device) -> Tensor:
    """(B, count) encoder positions 1..count of the patch tokens."""
    return torch.arange(1, count + 1, device=device).unsqueeze(0).expand(batch, count)
