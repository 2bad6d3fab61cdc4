"""What every pruning method is: a static-shape torch module from VisionFeatures to a Selection (contract.py).

A method decides which tokens survive and how merged tokens are formed; the vision graph applies that
selection to the model's token streams, projects them, and lays the crops out as the model does.
"""

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from vtp_export.contract import Geometry, Selection, Signal, VisionFeatures
from vtp_export.errors import UsageError
from vtp_export.onnx.names import VISION_OUTPUTS
from vtp_export.registry import Registry

# Every method registers itself here from its own module (methods/__init__.py imports them all).
METHODS: Registry[type["PruningMethod"]] = Registry("method")

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
    """Maps VisionFeatures (one crop per batch row) to a Selection with static shapes: K slots per crop, each
    a kept source row (or a merge the Selection states) with its encoder position in token_index (CLS = 0,
    patches 1..N, the anchor of a merged token, NO_SOURCE where there is none: padding or a merge of many).
    A method with a data-dependent count also sets num_valid (B,): its real tokens fill the first slots.
    Methods that score the projected tokens (Stream.PROJECTED) call the projector on the patches themselves
    and hand those projections back in the Selection, so the graph projects once.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    reference: ClassVar[str]  # official repository @ commit, file
    options: ClassVar[tuple[MethodOption, ...]] = ()
    # What the method reads besides the patch features; a model whose tower lacks one refuses the method.
    requires: ClassVar[frozenset[Signal]] = frozenset({Signal.CLS_ATTENTION, Signal.KEYS})
    unsupported_reason: ClassVar[str] = ""  # said after the refusal, e.g. which paper form needs what
    projects_all_tokens: ClassVar[bool] = False  # projects all N tokens (scores them, or keeps them all)
    # False where float noise between backends legitimately changes the kept set (chaotic tie structure):
    # verification then measures set overlap instead of requiring identical indices.
    exact_selection: ClassVar[bool] = True
    # Compares a video's temporal groups (evs): one budget over the whole video instead of K / G per group, and
    # only for video exports (--frames).
    temporal: ClassVar[bool] = False

    # Needs text_embeds, a graph input (both set from `requires`): text_conditioned, the CLIP text graph's embedding
    # of the question (the export carries text.onnx); prompt_conditioned, the mean LLM input embedding of the
    # prompt's text tokens, which the runtime computes from the LLM's embedding table (no text graph).
    text_conditioned: ClassVar[bool] = False
    prompt_conditioned: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.text_conditioned = Signal.CLIP_TEXT in cls.requires
        cls.prompt_conditioned = Signal.PROMPT_EMBEDS in cls.requires

    @classmethod
    def for_signals(cls, signals: frozenset[Signal]) -> type["PruningMethod"]:
        """The form of the method that a model exposing `signals` runs: the method itself, unless it has a form per
        model family (cdpruner: CLIP text relevance on LLaVA, the prompt's LLM embedding on Qwen)."""
        return cls

    @property
    def takes_text_embeds(self) -> bool:
        """The vision graph has the text_embeds input."""
        return self.text_conditioned or self.prompt_conditioned

    def __init__(self, geometry: Geometry, keep: int, **options: Any) -> None:
        super().__init__()
        self.geometry = geometry
        self.keep = keep
        self.settings = {o.name: options.get(o.name, o.default) for o in self.options}

    @classmethod
    def output_tokens(cls, geometry: Geometry, keep: int | None) -> int:
        """The tokens the method keeps of each crop, after validating the requested per-image keep: 1..N-1 for
        one crop; for C crops (LLaVA-NeXT) a multiple of C whose share of each crop is 1..N-1."""
        n, crops, unit = geometry.num_patches, geometry.crops, geometry.crop_name
        if keep is None:
            raise UsageError(f"method {cls.name} needs --keep ({crops}..{crops * (n - 1)}"
                             + (f", a multiple of the {crops} {unit})" if crops > 1 else ")"))
        if crops > 1 and keep % crops:
            low, high = keep // crops * crops, (keep // crops + 1) * crops
            nearest = " or ".join(str(k) for k in (low, high) if crops <= k <= crops * (n - 1))
            raise UsageError(f"--keep {keep} is not a multiple of the {crops} {unit} {cls.name} splits it over "
                             f"(top-k per {'group' if geometry.frames else 'crop'}): use {nearest}")
        if not 1 <= keep // crops < n:
            raise UsageError(f"--keep {keep} is out of range for {cls.name}: the model has {crops * n} tokens per "
                             f"{'video' if geometry.frames else 'image'}{f' in {crops} {unit}' if crops > 1 else ''}, "
                             f"use {crops}..{crops * (n - 1)}")
        return keep // crops

    @property
    def tokens_per_image(self) -> int:
        """K, the visual tokens the LLM receives per image: the per-crop keep over all crops."""
        return self.keep * self.geometry.crops

    @property
    def keep_summary(self) -> str:
        """'keep=K' per image, with a per-crop method's share: 'keep=64 (32 in each of the 2 temporal groups)'."""
        if self.keep == self.tokens_per_image:
            return f"keep={self.keep}"
        geometry = self.geometry
        return f"keep={self.tokens_per_image} ({self.keep} in each of the {geometry.crops} {geometry.crop_name})"

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
        """The vision graph's outputs with this method: NUM_VALID too where the Selection carries num_valid."""
        return VISION_OUTPUTS

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        """The method on each batch row (one crop); `projector` for methods that score projected tokens."""
        raise NotImplementedError

    def recorded_options(self) -> dict[str, Any]:
        """Options as resolved for this export (defaults filled in), for config.json."""
        return dict(self.settings)

    def variant(self) -> dict[str, Any]:
        """The resolved options that differ from what the defaults resolve to at this keep: what tells this
        export apart from the method's default one (in folder names and profile labels)."""
        defaults = type(self)(self.geometry, self.keep).recorded_options()
        return {k: v for k, v in self.recorded_options().items() if defaults.get(k) != v}


def patch_positions(batch: int, count: int, device: torch.device) -> Tensor:
    """(B, count) encoder positions 1..count of the patch tokens."""
    return torch.arange(1, count + 1, device=device).unsqueeze(0).expand(batch, count)
