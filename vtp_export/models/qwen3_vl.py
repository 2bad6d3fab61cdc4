"""Qwen3-VL: a ViT without CLS (full attention, learned positions resampled to the image, 2-D RoPE), a 2x2 patch
merger into the LLM width, DeepStack mergers that project three intermediate blocks' merged tokens into the LLM's
first layers, and an LLM whose image tokens carry interleaved 3-D M-RoPE positions.

Checkpoints: Qwen/Qwen3-VL-2B-Instruct, -4B-Instruct and -8B-Instruct (transformers
Qwen3VLForConditionalGeneration, models/qwen3_vl/modeling_qwen3_vl.py; the hub's `model.visual.*` keys and
`visual.*`); the geometry comes from the checkpoint's config. `qwen3-vl-tiny` is the same architecture at toy
width (tests).

The image size is fixed at export (`--image-size HxW`, multiples of 32): M = H/32 x W/32 merged tokens, numbered
1..M in raster order in token_index. The graph outputs each kept token's DeepStack levels too (deepstack_embeds,
export/graph.py), in image_embeds' slot order. Qwen3-VL's processor upscales images below 65536 pixels
(its shortest_edge); the export takes any size down to 2x2 merged tokens, which the tower runs as it is.
Runtime: the special tokens, the image placeholder and the M-RoPE positions are Qwen2.5-VL's (get_rope_index of
Qwen3VLModel gives a still image the same (t, h, w) as Qwen2.5-VL's: t = start, h = start + row, w = start + col,
the text after it at start + max(rows, cols); the interleaving of the three sections is inside the text model's
rotary embedding, so the position ids are (3, T) as for Qwen2.5-VL); the chat template has no default system turn.
Each kept token's DeepStack levels go to the LLM with its embedding (runtime/llm/transformers.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vtp_export.contract import Geometry, VisionStack
from vtp_export.errors import WeightsError
from vtp_export.models.base import ModelOption, register
from vtp_export.models.qwen2_5_vl import FRAMES_OPTION, Qwen25VL, image_size, qwen_preprocess, video_groups
from vtp_export.models.token_index import decode_token_index

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from vtp_export.contract import MethodRequirements
    from vtp_export.util.video import VideoClip

DEFAULT_IMAGE_SIZE = "512x512"
PROCESSOR_MEAN = PROCESSOR_STD = (0.5, 0.5, 0.5)  # Qwen3-VL's preprocessor_config.json


def deepstack_level_count(config: Any) -> int:
    """The DeepStack levels a checkpoint's vision tower feeds its LLM (one per deepstack_visual_indexes entry; 0 for
    a model without DeepStack)."""
    return len(getattr(config.vision_config, "deepstack_visual_indexes", None) or ())


def vision_2b() -> dict:
    """The vision tower of Qwen3-VL-2B (4B: the same with out_hidden_size 2560; 8B: depth 27, width 1152,
    deepstack_visual_indexes [8, 16, 24], out_hidden_size 4096)."""
    return dict(depth=24, hidden_size=1024, num_heads=16, intermediate_size=4096, out_hidden_size=2048,
                deepstack_visual_indexes=[5, 11, 17], num_position_embeddings=2304, patch_size=16,
                temporal_patch_size=2, spatial_merge_size=2, hidden_act="gelu_pytorch_tanh")


def text_2b() -> dict:
    return dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=262144,
                rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                                    "mrope_section": [24, 20, 20], "mrope_interleaved": True},
                bos_token_id=151643, eos_token_id=151645)


def tiny_vision() -> dict:
    """Toy width, the real patch/merge layout, two DeepStack levels; a 16x16 position table, so that export sizes
    both shrink it (224 px: 14 patches a side) and stretch it (320 px: 20). Random weights drawn at std 0.2
    (HF's 0.02 leaves attention uniform to 1e-3 at this width, and HoloV's ranks by it at float32 rounding)."""
    return dict(depth=4, hidden_size=32, num_heads=2, intermediate_size=48, out_hidden_size=64,
                deepstack_visual_indexes=[0, 2], num_position_embeddings=256, patch_size=16, temporal_patch_size=2,
                spatial_merge_size=2, hidden_act="gelu_pytorch_tanh", initializer_range=0.2)


def tiny_text() -> dict:
    """Toy width with Qwen's vocabulary and special ids; mrope_section sums to head_dim / 2 = 8. One layer more than
    the DeepStack levels, as on the hub's checkpoints (llama.cpp's qwen3vl adds no level after the last layer)."""
    return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, vocab_size=151936, max_position_embeddings=4096,
                rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 100.0,
                                                    "mrope_section": [4, 2, 2], "mrope_interleaved": True},
                bos_token_id=151643, eos_token_id=151645)


@register
class Qwen3VL(Qwen25VL):
    name = "qwen3-vl"
    summary = "Qwen3-VL-2B/4B/8B (ViT with 2-D RoPE, 2x2 merger, DeepStack levels, M-RoPE LLM), --image-size HxW"
    model_type = "qwen3_vl"
    hf_class = "Qwen3VLForConditionalGeneration"
    canonical_repo = "Qwen/Qwen3-VL-2B-Instruct"
    config_class = "Qwen3VLConfig"
    family = "Qwen3-VL"
    options = (ModelOption("image_size", "image size HxW fixed at export, multiples of 32", DEFAULT_IMAGE_SIZE),
               FRAMES_OPTION)

    def vision_settings(self) -> dict:
        return vision_2b()

    def text_settings(self) -> dict:
        return text_2b()

    def check_vision(self, vision: Any) -> None:
        if not all(0 <= i < vision.depth for i in vision.deepstack_visual_indexes):
            raise WeightsError(f"deepstack_visual_indexes {list(vision.deepstack_visual_indexes)} are not blocks of "
                               f"the {vision.depth}-block tower")
        side = round(vision.num_position_embeddings ** 0.5)
        if side * side != vision.num_position_embeddings:
            raise WeightsError(f"num_position_embeddings={vision.num_position_embeddings} is not a square grid")

    def image_size(self, options: dict[str, str], unit: int) -> tuple[int, int]:
        return image_size(self.resolved_options(options)["image_size"], unit, (2 * unit) ** 2,
                          f"Qwen3-VL takes at least {2 * unit}x{2 * unit} pixels (2x2 merged tokens)")

    def build_vision(self, config: Any) -> tuple[nn.Module, nn.Module]:
        """HF's vision tower without its merger (its DeepStack mergers stay in it), and the merger as the projector
        of merged tokens."""
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel

        from vtp_export.towers.qwen3 import PatchMerger

        tower = Qwen3VLVisionModel(config.vision_config).float().eval()
        merger = tower.merger
        del tower.merger
        return tower, PatchMerger(merger, config.vision_config.spatial_merge_size ** 2).eval()

    def level_projectors(self, stack: VisionStack) -> tuple[nn.Module, ...]:
        """The DeepStack mergers, one per deepstack_visual_indexes entry, on the levels' merged tokens."""
        from vtp_export.towers.qwen3 import PatchMerger

        unit = stack.config.vision_config.spatial_merge_size ** 2
        return tuple(PatchMerger(merger, unit).eval() for merger in stack.tower.deepstack_merger_list)

    def feature_extractor(self, stack: VisionStack, method: MethodRequirements) -> nn.Module:
        from vtp_export.towers.qwen3 import Qwen3Features

        return video_groups(Qwen3Features(stack, method), stack.geometry)

    def preprocess(self, images: list, geometry: Geometry) -> np.ndarray:
        patch = geometry.image_height // geometry.grid_rows // 2  # merge 2 (geometry)
        return qwen_preprocess(images, geometry.image_height, geometry.image_width, PROCESSOR_MEAN, PROCESSOR_STD,
                               patch)

    def video_prompt(self, clip: VideoClip, geometry: Geometry) -> str:
        """Qwen3VLProcessor's video layout: each temporal group its own span after its timestamp, `<{t:.1f}
        seconds><|vision_start|><|video_pad|>...<|vision_end|>`, t the mean time of the group's two frames
        (_calculate_timestamps); the pads replaced by the group's kept tokens."""
        times = clip.frame_times
        return "".join(f"<{(times[2 * g] + times[2 * g + 1]) / 2:.1f} seconds>{self.image_token}"
                       for g in range(geometry.crops))

    def video_parts(self, token_index: np.ndarray, geometry: Geometry) -> list[np.ndarray]:
        """The kept slots of each group (slots without a source go with the slot before them)."""
        import numpy as np

        group, _ = decode_token_index(token_index, geometry.num_patches)
        owner = np.maximum.accumulate(np.where(token_index >= 0, np.arange(len(token_index)), -1))  # last real slot
        group = np.where(owner >= 0, group[owner.clip(min=0)], 0)
        return [np.flatnonzero(group == g) for g in range(geometry.crops)]

    def video_positions(self, start: int, token_index: np.ndarray, geometry: Geometry, policy: str, clip: VideoClip,
                        config: Any, part: int) -> tuple[np.ndarray, int]:
        """HF's get_rope_index splits a video into its groups (grid_t 1 each, between timestamps): group `part` is
        placed as a still image (image_positions on its merged positions 1..M)."""
        import numpy as np

        local = np.where(token_index >= 0, token_index - part * (geometry.num_patches + 1), token_index)
        return self.image_positions(start, local, geometry, policy)

    def prompt(self, content: str, config: Any) -> str:
        """One user turn of Qwen3-VL's chat template (the processor's chat_template of the Qwen3-VL Instruct
        checkpoints): a system turn only where the conversation starts with one, so none here, unlike Qwen2.5-VL's
        default 'You are a helpful assistant.'."""
        return f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


@register
class Qwen3VLTiny(Qwen3VL):
    name = "qwen3-vl-tiny"
    summary = "Qwen3-VL architecture at toy width (tests); always random weights"
    canonical_repo = None
    random_only = True

    def vision_settings(self) -> dict:
        return tiny_vision()

    def text_settings(self) -> dict:
        return tiny_text()
