"""What vtp-export needs of a vision-language architecture, declared once per model in models/<model>.py.

An adapter reads and validates the checkpoint's config (-> Geometry), maps checkpoint keys of the vision
side, builds the vision stack, provides the feature-extraction part of the graph (the tower up to its
scoring layer and the signals it exposes to pruning methods) and the projector, and on the runtime side
preprocesses images with the HF processor's code, writes the prompt template and builds the LLM.

Importing an adapter does not import torch: the runtime with onnxruntime/TensorRT and llama.cpp runs on
devices without PyTorch, so export-side members import it where they are called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from vtp_export.contract import Geometry, MethodRequirements, Signal, VisionStack
from vtp_export.errors import UsageError, WeightsError
from vtp_export.models.token_index import decode_token_index
from vtp_export.registry import Registry

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from vtp_export.util.video import VideoClip


@dataclass(frozen=True)
class ModelOption:
    """A model-level export option (`--grid`, `--image-size`), parsed and validated by its adapter."""

    name: str  # the command-line flag without dashes
    help: str
    default: str


def parse_size(text: str, what: str) -> tuple[int, int]:
    """'2x3' -> (2, 3)."""
    rows, sep, cols = text.lower().partition("x")
    if not (sep and rows.isdigit() and cols.isdigit() and int(rows) > 0 and int(cols) > 0):
        raise UsageError(f"{what} {text!r}: expected two positive integers like 2x2")
    return int(rows), int(cols)


class VisionLanguageModel:
    """One architecture, registered in MODELS under `name`. Subclasses set the class attributes and
    implement the members below; nothing here holds state beyond the declaration."""

    name: ClassVar[str]
    summary: ClassVar[str]
    model_type: ClassVar[str]  # config.json's model_type of the checkpoints this reads
    signals: ClassVar[frozenset[Signal]]
    image_token: ClassVar[str]  # the prompt placeholder one image's tokens replace
    image_pad_token: ClassVar[str]  # the special token of the placeholder that stands for the image's embeddings
    video_token: ClassVar[str | None] = None  # the prompt placeholder one video's tokens replace (video exports)
    image_separator: ClassVar[str] = "\n"  # between the image placeholders a prompt without them gets, and its text
    default_position_ids: ClassVar[str] = "sequential"  # the runtime's position policy unless one is asked for
    mrope: ClassVar[bool] = False  # the LLM takes (3, T) M-RoPE positions (text_positions, image_positions)
    hf_class: ClassVar[str]  # the transformers class of the whole model (its LLM half serves the runtime)
    canonical_repo: ClassVar[str | None] = None  # looked up offline in the HF cache without --weights
    # The CLIP model whose text side text-conditioned methods use (looked up offline like canonical_repo).
    canonical_clip_repo: ClassVar[str | None] = None
    # Checkpoint tensors the runtime reads (LLaVA-NeXT's image_newline for layout="hf"): the keys it may have.
    image_newline_keys: ClassVar[tuple[str, ...]] = ()
    random_only: ClassVar[bool] = False  # toy sizes for tests: only seeded random weights exist
    options: ClassVar[tuple[ModelOption, ...]] = ()

    # --- config and geometry ---------------------------------------------------------------------------
    def default_config(self) -> Any:
        """The HF config of the canonical checkpoint (used with random weights)."""
        raise NotImplementedError

    def config_from_dict(self, raw: dict) -> Any:
        raise NotImplementedError

    def default_clip_config(self) -> Any:
        """The CLIP config of the canonical checkpoint's tower (random weights of text-conditioned methods);
        only models whose signals include Signal.CLIP_TEXT have one."""
        raise NotImplementedError(f"{self.name} has no CLIP text side")

    def geometry(self, config: Any, options: dict[str, str]) -> Geometry:
        """Validated static sizes; WeightsError for a config this adapter cannot export."""
        raise NotImplementedError

    def resolved_options(self, options: dict[str, str]) -> dict[str, str]:
        """The model options with defaults filled in; UsageError for options this model does not have."""
        known = {o.name: o for o in self.options}
        for key in options:
            if key not in known:
                flags = ", ".join(f"--{o.name.replace('_', '-')}" for o in self.options) or "none"
                raise UsageError(f"--{key.replace('_', '-')} is not an option of {self.name} (its options: {flags})")
        return {o.name: options.get(o.name) or o.default for o in self.options}

    def check_method(self, method: MethodRequirements) -> None:
        """UsageError in one line where the method needs a signal this tower lacks."""
        missing = [s.value for s in Signal if s in method.requires and s not in self.signals]  # declared order
        if missing:
            raise UsageError(f"method {method.name} needs {', '.join(missing)}, which {self.name} does not have"
                             + (f" ({method.unsupported_reason})" if method.unsupported_reason else ""))

    # --- weights (export side) -------------------------------------------------------------------------
    def vision_key(self, checkpoint_key: str) -> str | None:
        """Checkpoint key -> "tower.<name>" / "projector.<name>", or None outside the vision graph."""
        raise NotImplementedError

    def build_vision(self, config: Any) -> tuple[nn.Module, nn.Module]:
        """Tower and projector of `config`, float32, eval mode, HF's initialisation (seed set by the caller)."""
        raise NotImplementedError

    def level_projectors(self, stack: VisionStack) -> tuple[nn.Module, ...]:
        """The projector of each feature level the tower hands over besides its main stream (VisionFeatures.levels,
        Qwen3-VL's DeepStack mergers); the graph then outputs deepstack_embeds. None by default."""
        return ()

    def feature_extractor(self, stack: VisionStack, method: MethodRequirements) -> nn.Module:
        """The graph's first part: (pixel_values[, text_embeds]) -> contract.VisionFeatures."""
        raise NotImplementedError

    def token_layout(self, geometry: Geometry) -> nn.Module:
        """The graph's last part: (image_embeds of the selected slots, contract.Selection) -> the outputs, one image's
        tokens in the order the LLM receives them, token_index encoded (encode_token_index)."""
        from vtp_export.models.layout import OneCrop

        return OneCrop()

    # --- runtime ---------------------------------------------------------------------------------------
    def preprocess(self, images: list, geometry: Geometry) -> np.ndarray:
        """PIL images -> pixel_values as the vision graph takes them, with the HF processor's own code."""
        raise NotImplementedError

    def prompt(self, content: str, config: Any) -> str:
        """The model's conversation template around one user turn (content holds the image placeholders), for
        the checkpoint of `config`."""
        raise NotImplementedError

    def image_span_ids(self, config: Any) -> frozenset[int]:
        """The ids of an image's span in the tokenized prompt (its placeholder's tokens), which the prompt's mean LLM
        input embedding leaves out; only models whose signals include Signal.PROMPT_EMBEDS have them."""
        raise NotImplementedError(f"{self.name} has no prompt embedding signal")

    def text_positions(self, start: int, length: int) -> np.ndarray:
        """Position ids of `length` text tokens from `start`: (length,), or (3, length) for M-RoPE models."""
        import numpy as np

        return np.arange(start, start + length, dtype=np.int64)

    def image_positions(self, start: int, token_index: np.ndarray, geometry: Geometry,
                        policy: str) -> tuple[np.ndarray, int]:
        """Position ids of one image's kept tokens placed at `start`, and where the text after them starts.
        sequential: the kept tokens numbered on (what LLaVA does); original: each token keeps the position
        its source had among the image's unpruned tokens (crop by crop, raster order; CLS tokens and tokens
        without a single source at the last one) and the text resumes after all of them (FastV / TensorRT
        Edge-LLM style)."""
        import numpy as np

        kept = len(token_index)
        if policy == "sequential":
            return np.arange(start, start + kept, dtype=np.int64), start + kept
        n = geometry.num_patches
        crop, within = decode_token_index(token_index, n)
        offsets = np.where((token_index >= 0) & (within >= 1), crop * n + within - 1, geometry.tokens_per_image - 1)
        return (start + offsets).astype(np.int64), start + geometry.tokens_per_image

    # --- runtime, video exports (Geometry.frames) -------------------------------------------------------------
    def preprocess_video(self, clips: list[VideoClip], geometry: Geometry) -> np.ndarray:
        """Video clips of geometry.frames frames -> pixel_values (B, F, 3, H, W), with the HF processor's code."""
        raise NotImplementedError(f"{self.name} takes no video")

    def video_prompt(self, clip: VideoClip, geometry: Geometry) -> str:
        """The prompt text a video's placeholder becomes: one image_token per part of its tokens (video_parts), in
        the model's video layout (timestamps, separators)."""
        raise NotImplementedError(f"{self.name} takes no video")

    def video_parts(self, token_index: np.ndarray, geometry: Geometry) -> list[np.ndarray]:
        """A video's kept slots split into the prompt's parts (video_prompt), as slot indices."""
        raise NotImplementedError(f"{self.name} takes no video")

    def video_positions(self, start: int, token_index: np.ndarray, geometry: Geometry, policy: str, clip: VideoClip,
                        config: Any, part: int) -> tuple[np.ndarray, int]:
        """Position ids of one part of a video's kept tokens placed at `start`, and where the text after them
        starts (image_positions for a video)."""
        raise NotImplementedError(f"{self.name} takes no video")

    def stand_in_tokenizer(self, config: Any) -> Any:
        """A byte-level tokenizer with the model's special-token layout, for random-weight LLMs (the text is
        noise, every id path runs)."""
        raise NotImplementedError

    def check_llm_config(self, config: Any, geometry: Geometry, where: str) -> None:
        """WeightsError where an LLM's config does not fit an export of this model."""
        if getattr(config, "model_type", None) != self.model_type:
            raise WeightsError(f"{where} is a {getattr(config, 'model_type', None)!r} model, the export is {self.name} "
                               f"({self.model_type!r})")
        width = config.text_config.hidden_size
        if width != geometry.llm_width:
            raise WeightsError(f"{where} has an LLM of width {width}, the export's image embeddings are "
                               f"{geometry.llm_width} wide")


# Every adapter registers itself here from its own module (models/__init__.py imports them all).
MODELS: Registry[VisionLanguageModel] = Registry("model")


def register(cls: type[VisionLanguageModel]) -> type[VisionLanguageModel]:
    MODELS.add(cls.name, cls())
    return cls
