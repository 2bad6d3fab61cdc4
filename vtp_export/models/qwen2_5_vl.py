"""Qwen2.5-VL: a ViT without CLS (window attention, 2-D RoPE), a 2x2 patch merger into the LLM width, and an
LLM whose image tokens carry 3-D M-RoPE positions.

Checkpoints: Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct (transformers Qwen2_5_VLForConditionalGeneration;
the hub's `visual.*` keys and transformers 5.x's `model.visual.*`); the geometry comes from the checkpoint's
config. `qwen2.5-vl-tiny` is the same architecture at toy width (tests).

The image size is fixed at export (`--image-size HxW`, multiples of 28): M = H/28 x W/28 merged tokens, numbered
1..M in raster order in token_index (0 is unused: there is no CLS). The runtime resizes every image to that
size and then runs HF's own Qwen2-VL image processor on it, which leaves a size that is already a multiple of
28 unchanged (smart_resize is the identity there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from vtp_export.contract import TENSORRT_MAX_TOPK_K, Geometry, Signal, VisionStack
from vtp_export.errors import UsageError, WeightsError
from vtp_export.models.base import ModelOption, VisionLanguageModel, parse_size, register
from vtp_export.models.clip import CLIP_MEAN, CLIP_STD
from vtp_export.models.token_index import decode_token_index

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from vtp_export.contract import MethodRequirements
    from vtp_export.util.video import VideoClip

DEFAULT_IMAGE_SIZE = "448x448"
MIN_PIXELS = 56 * 56  # the smallest image Qwen's processor produces (its min_pixels)
SYSTEM_PROMPT = "You are a helpful assistant."  # the chat template's default system turn

# Special tokens of Qwen2.5-VL's tokenizer (tokenizer_config.json added_tokens_decoder).
SPECIAL_TOKENS = {
    151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>", 151652: "<|vision_start|>",
    151653: "<|vision_end|>", 151654: "<|vision_pad|>", 151655: "<|image_pad|>", 151656: "<|video_pad|>",
}


def vision_3b() -> dict:
    """The vision tower of Qwen2.5-VL-3B and -7B (7B differs only in out_hidden_size 3584)."""
    return dict(depth=32, hidden_size=1280, num_heads=16, intermediate_size=3420, out_hidden_size=2048,
                fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14, temporal_patch_size=2,
                spatial_merge_size=2, tokens_per_second=2, hidden_act="silu")


def text_3b() -> dict:
    return dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                num_key_value_heads=2, vocab_size=151936, max_position_embeddings=128000, rms_norm_eps=1e-6,
                rope_theta=1000000.0, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
                bos_token_id=151643, eos_token_id=151645)


def tiny_vision() -> dict:
    """Toy width, the real patch/merge/window layout; its last block a full-attention one like the real tower."""
    return dict(depth=4, hidden_size=32, num_heads=2, intermediate_size=48, out_hidden_size=64,
                fullatt_block_indexes=[1, 3], window_size=112, patch_size=14, temporal_patch_size=2,
                spatial_merge_size=2, tokens_per_second=2, hidden_act="silu")


def tiny_text() -> dict:
    """Toy width with Qwen's vocabulary and special ids; mrope_section sums to head_dim / 2 = 8. rope_theta 100
    turns the h and w sections' few frequencies fast enough that the tokens' 3-D positions change the answer."""
    return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=151936, max_position_embeddings=4096, rms_norm_eps=1e-6,
                rope_theta=100.0, rope_scaling={"type": "mrope", "mrope_section": [4, 2, 2]},
                bos_token_id=151643, eos_token_id=151645)


def original_image_positions(start: int, token_index: np.ndarray, grid_rows: int,
                             grid_cols: int) -> tuple[np.ndarray, int]:
    """(3, K) M-RoPE positions of an image's kept tokens at `start` on a grid_rows x grid_cols merged grid: token
    r (token_index r + 1) at (start, start + r // grid_cols, start + r % grid_cols), slots without a source (-1) at
    the last token's; and where the text after the image resumes, start + max(grid_rows, grid_cols), as if no token
    had been pruned (HF's get_rope_index of the unpruned prompt, gathered; vtp-export's vLLM plugin places the
    tokens by it too)."""
    import numpy as np

    raster = np.where(token_index >= 1, token_index - 1, grid_rows * grid_cols - 1)
    rows, cols = np.divmod(raster, grid_cols)
    positions = np.stack([np.zeros_like(raster), rows, cols]) + start
    return positions.astype(np.int64), start + max(grid_rows, grid_cols)


FRAMES_OPTION = ModelOption("frames", "frames per video F fixed at export, even (the tower's temporal patch is 2 "
                            "frames: F/2 temporal groups); 0 for still images", "0")


def video_frames(text: str) -> int:
    """'8' -> 8 frames per video (0: still images), checked: even, since each temporal patch is two frames."""
    if not text.isdigit():
        raise UsageError(f"--frames {text!r}: expected an even number of frames per video, e.g. 8")
    frames = int(text)
    if frames % 2:
        nearest = " or ".join(str(f) for f in (frames - 1, frames + 1) if f >= 2)
        raise UsageError(f"--frames {frames}: the tower's temporal patch is 2 frames, so F must be even: use {nearest}")
    return frames


def image_size(text: str, unit: int, min_pixels: int = MIN_PIXELS,
               smallest: str = "Qwen2.5-VL's processor takes at least 56x56 pixels") -> tuple[int, int]:
    """'448x448' -> (448, 448), checked: multiples of `unit`, at least `min_pixels` (`smallest` says why), fewer
    merged tokens than TensorRT's TopK can sort."""
    height, width = parse_size(text, "--image-size")
    if height % unit or width % unit:
        raise UsageError(f"--image-size {text}: height and width must be multiples of {unit} (patch x merge), "
                         f"e.g. {round(height / unit) * unit or unit}x{round(width / unit) * unit or unit}")
    if height * width < min_pixels:
        raise UsageError(f"--image-size {text} is too small: {smallest}")
    tokens = (height // unit) * (width // unit)
    if tokens >= TENSORRT_MAX_TOPK_K:
        raise UsageError(f"--image-size {text} is too large: {tokens} merged tokens, the graph sorts them with "
                         f"TensorRT's TopK, which takes fewer than {TENSORRT_MAX_TOPK_K}")
    return height, width


@register
class Qwen25VL(VisionLanguageModel):
    name = "qwen2.5-vl"
    summary = "Qwen2.5-VL-3B/7B (ViT with window attention and 2-D RoPE, 2x2 merger, M-RoPE LLM), --image-size HxW"
    model_type = "qwen2_5_vl"
    signals = frozenset({Signal.PATCH_SCORES, Signal.PROMPT_EMBEDS, Signal.TEMPORAL_GROUPS})
    image_token = "<|vision_start|><|image_pad|><|vision_end|>"
    image_pad_token = "<|image_pad|>"
    video_token = "<|vision_start|><|video_pad|><|vision_end|>"
    image_separator = ""  # the chat template puts the question right after <|vision_end|>
    default_position_ids = "original"
    mrope = True
    hf_class = "Qwen2_5_VLForConditionalGeneration"
    canonical_repo = "Qwen/Qwen2.5-VL-3B-Instruct"
    config_class: ClassVar[str] = "Qwen2_5_VLConfig"  # transformers' config class of the checkpoints
    family: ClassVar[str] = "Qwen2.5-VL"
    options = (ModelOption("image_size", "image size HxW fixed at export, multiples of 28", DEFAULT_IMAGE_SIZE),
               FRAMES_OPTION)

    def vision_settings(self) -> dict:
        return vision_3b()

    def text_settings(self) -> dict:
        return text_3b()

    def default_config(self) -> Any:
        import transformers

        return getattr(transformers, self.config_class)(
            vision_config=self.vision_settings(), text_config=self.text_settings(), image_token_id=151655,
            video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653, tie_word_embeddings=True)

    def config_from_dict(self, raw: dict) -> Any:
        import transformers

        return getattr(transformers, self.config_class).from_dict(raw)

    def check_vision(self, vision: Any) -> None:
        """WeightsError for a vision config the static tower cannot export, beyond the checks all Qwen towers share."""

    def image_size(self, options: dict[str, str], unit: int) -> tuple[int, int]:
        return image_size(self.resolved_options(options)["image_size"], unit)

    def geometry(self, config: Any, options: dict[str, str]) -> Geometry:
        vision = config.vision_config
        if vision.temporal_patch_size != 2 or vision.spatial_merge_size != 2:
            raise WeightsError(f"temporal_patch_size={vision.temporal_patch_size}, spatial_merge_size="
                               f"{vision.spatial_merge_size}: only {self.family}'s 2 and 2 are supported")
        if vision.out_hidden_size != config.text_config.hidden_size:
            raise WeightsError(f"the merger's width {vision.out_hidden_size} differs from the LLM's "
                               f"{config.text_config.hidden_size}")
        self.check_vision(vision)
        unit = vision.patch_size * vision.spatial_merge_size
        height, width = self.image_size(options, unit)
        frames = video_frames(self.resolved_options(options)["frames"])
        merge = vision.spatial_merge_size ** 2
        return Geometry(
            image_height=height, image_width=width, grid_rows=height // unit, grid_cols=width // unit,
            cls_token=False, vision_width=vision.hidden_size * merge, num_heads=vision.num_heads,
            head_dim=vision.hidden_size // vision.num_heads, llm_width=config.text_config.hidden_size,
            feature_layer=vision.depth - 1, crops=max(1, frames // vision.temporal_patch_size), frames=frames,
        )

    def vision_key(self, checkpoint_key: str) -> str | None:
        key = checkpoint_key.removeprefix("model.")
        if key.startswith("visual.merger."):
            return "projector." + key.removeprefix("visual.merger.")
        if key.startswith("visual."):
            return "tower." + key.removeprefix("visual.")
        return None

    def build_vision(self, config: Any) -> tuple[nn.Module, nn.Module]:
        """HF's vision tower without its merger, and the merger as the projector of merged tokens."""
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

        from vtp_export.towers.qwen import PatchMerger

        tower = Qwen2_5_VisionTransformerPretrainedModel(config.vision_config).float().eval()
        merger = tower.merger
        del tower.merger
        return tower, PatchMerger(merger, config.vision_config.spatial_merge_size ** 2).eval()

    def feature_extractor(self, stack: VisionStack, method: MethodRequirements) -> nn.Module:
        from vtp_export.towers.qwen import QwenFeatures

        return video_groups(QwenFeatures(stack, method), stack.geometry)

    def token_layout(self, geometry: Geometry) -> nn.Module:
        from vtp_export.models.layout import OneCrop, TemporalLayout

        return TemporalLayout(geometry) if geometry.frames else OneCrop()

    def preprocess(self, images: list, geometry: Geometry) -> np.ndarray:
        return qwen_preprocess(images, geometry.image_height, geometry.image_width)

    def prompt(self, content: str, config: Any) -> str:
        return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n"
                "<|im_start|>assistant\n")

    def image_span_ids(self, config: Any) -> frozenset[int]:
        """<|vision_start|>, <|image_pad|>, <|vision_end|>: the tokens OpenVINO GenAI's CDPruner leaves out of the
        prompt's instruction tokens (VisionTokenPruningProcessor::extract_text_features); <|video_pad|> too."""
        return frozenset({config.vision_start_token_id, config.image_token_id, config.video_token_id,
                          config.vision_end_token_id})

    def text_positions(self, start: int, length: int) -> np.ndarray:
        """M-RoPE text positions: t = h = w."""
        import numpy as np

        return np.broadcast_to(np.arange(start, start + length, dtype=np.int64), (3, length)).copy()

    def image_positions(self, start: int, token_index: np.ndarray, geometry: Geometry,
                        policy: str) -> tuple[np.ndarray, int]:
        """original (HF's get_rope_index, gathered): merged token r of the mh x mw grid at (start, start + r // mw,
        start + r % mw), slots without a source at the last token's, and the text after the image resuming at
        start + max(mh, mw) as if no token had been pruned (HoloV's adjust_ids, DART, TensorRT Edge-LLM).
        sequential: the kept tokens numbered on as text (t = h = w)."""
        kept = len(token_index)
        if policy == "sequential":
            return self.text_positions(start, kept), start + kept
        return original_image_positions(start, token_index, geometry.grid_rows, geometry.grid_cols)

    def preprocess_video(self, clips: list[VideoClip], geometry: Geometry) -> np.ndarray:
        """(B, F, 3, H, W) float32: every frame as preprocess() takes an image (resized to the export's size, then
        the Qwen2-VL processor's rescale and normalisation, per pixel what its video processor computes)."""
        pixels = self.preprocess([frame for clip in clips for frame in clip.frames], geometry)
        return pixels.reshape(len(clips), geometry.frames, *pixels.shape[1:])

    def video_prompt(self, clip: VideoClip, geometry: Geometry) -> str:
        """One span as an image's: Qwen2.5-VL's <|vision_start|><|video_pad|>...<|vision_end|>, the pads replaced by
        the video's tokens (the runtime's marker is the image pad: the LLM never sees the pad itself)."""
        return self.image_token

    def video_parts(self, token_index: np.ndarray, geometry: Geometry) -> list[np.ndarray]:
        import numpy as np

        return [np.arange(len(token_index))]

    def video_positions(self, start: int, token_index: np.ndarray, geometry: Geometry, policy: str, clip: VideoClip,
                        config: Any, part: int) -> tuple[np.ndarray, int]:
        """original (HF's get_rope_index with video_grid_thw and second_per_grid_ts, gathered): a token of group g at
        (start + int(g * tokens_per_second * second_per_grid), start + row, start + col) in float32 as HF computes
        it, second_per_grid = 2 / the sampled frame rate (Qwen2_5_VLProcessor); slots without a source at the last
        token's; the text after the video at start + max(rows, cols). sequential: numbered on as text."""
        import numpy as np

        if policy == "sequential":
            return self.text_positions(start, len(token_index)), start + len(token_index)
        tokens = geometry.num_patches
        group, within = decode_token_index(token_index, tokens)
        real = token_index >= 0
        group, raster = np.where(real, group, geometry.crops - 1), np.where(real, within - 1, tokens - 1)
        second_per_grid = np.float32(config.vision_config.temporal_patch_size / clip.sampled_fps)
        interval = np.float32(config.vision_config.tokens_per_second) * second_per_grid
        rows, cols = np.divmod(raster, geometry.grid_cols)
        positions = np.stack([(group.astype(np.float32) * interval).astype(np.int64), rows, cols]) + start
        return positions.astype(np.int64), start + max(geometry.grid_rows, geometry.grid_cols)

    def stand_in_tokenizer(self, config: Any) -> Any:
        from vtp_export.models.tokenizer import stand_in_qwen_tokenizer

        return stand_in_qwen_tokenizer(config.text_config.vocab_size, SPECIAL_TOKENS)


@register
class Qwen25VLTiny(Qwen25VL):
    name = "qwen2.5-vl-tiny"
    summary = "Qwen2.5-VL architecture at toy width (tests); always random weights"
    canonical_repo = None
    random_only = True

    def vision_settings(self) -> dict:
        return tiny_vision()

    def text_settings(self) -> dict:
        return tiny_text()


def video_groups(features: nn.Module, geometry: Geometry) -> nn.Module:
    """The tower's features, for a video export over its temporal groups (models/layout.py TemporalGroups)."""
    from vtp_export.models.layout import TemporalGroups

    return TemporalGroups(features, geometry) if geometry.frames else features


def qwen_preprocess(images: list, height: int, width: int, mean: tuple[float, ...] = CLIP_MEAN,
                    std: tuple[float, ...] = CLIP_STD, patch: int = 14) -> np.ndarray:
    """(B, 3, H, W) float32: each image resized to W x H (bicubic, the processor's resampling), then HF's Qwen2-VL
    image processor (PIL backend: convert to RGB, rescale by 1/255, normalise with the checkpoint's mean and std:
    CLIP's for Qwen2.5-VL), whose patch rows are put back into an image. The processor keeps aspect ratios, so
    only this resize fixes H x W."""
    from PIL import Image
    from transformers import Qwen2VLImageProcessorPil

    processor = Qwen2VLImageProcessorPil(do_resize=False, image_mean=list(mean), image_std=list(std), patch_size=patch)
    resized = [image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC) for image in images]
    rows = processor(resized, return_tensors="np")["pixel_values"]
    return unpatchify(rows, len(images), height, width, processor.patch_size, processor.merge_size,
                      processor.temporal_patch_size)


def unpatchify(rows: np.ndarray, batch: int, height: int, width: int, patch: int, merge: int,
               temporal: int) -> np.ndarray:
    """The processor's (B * N, 3 * T * P * P) patch rows (2x2 units in raster order, the frame repeated T times)
    -> (B, 3, H, W) float32: the inverse of Qwen2VLImageProcessor.patchify for a still image."""
    import numpy as np

    rows_m, cols_m = height // (patch * merge), width // (patch * merge)
    x = rows.reshape(batch, rows_m, cols_m, merge, merge, 3, temporal, patch, patch)[:, :, :, :, :, :, 0]
    x = x.transpose(0, 5, 1, 3, 6, 2, 4, 7)  # b, c, unit row, row in unit, pixel row, unit col, col in unit, px
    return np.ascontiguousarray(x.reshape(batch, 3, height, width), dtype=np.float32)
