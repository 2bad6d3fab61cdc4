"""What the LLaVA family shares of CLIP: tower configs, geometry, checkpoint key layouts, the CLIP text
side that text-conditioned methods use, and the HF processor's CLIP preprocessing. Torch-free; the tower's
graph code is towers/clip.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vtp_export.contract import Geometry, Signal
from vtp_export.errors import WeightsError

if TYPE_CHECKING:
    import numpy as np
    from transformers import CLIPConfig

# CLIP's image normalisation, as LLaVA's processors apply it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIGNALS = frozenset({Signal.CLS_ATTENTION, Signal.KEYS, Signal.NEXT_LAYER, Signal.CLIP_TEXT, Signal.PATCH_SCORES})


def clip_l336_vision() -> dict:
    """openai/clip-vit-large-patch14-336's vision tower, the one LLaVA-1.5 and LLaVA-NeXT use."""
    return dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")


def clip_l336_text() -> dict:
    return dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu")


def tiny_vision(image_size: int = 336) -> dict:
    """CLIP's layout at toy width: the real patch grid (576 tokens at 336 px), 4 layers."""
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                image_size=image_size, patch_size=14, projection_dim=16, hidden_act="quick_gelu")


def tiny_text() -> dict:
    """CLIP's text tower at toy width with CLIP's real tokenizer space (49408 ids, 77 positions)."""
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, vocab_size=49408, projection_dim=16, hidden_act="quick_gelu")


def clip_config(vision: dict, text: dict) -> CLIPConfig:
    from transformers import CLIPConfig

    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=text["projection_dim"])


def clip_geometry(config: Any, crops: int = 1, tile_rows: int = 0, tile_cols: int = 0) -> Geometry:
    """Geometry of a LLaVA-family config (CLIP tower, single feature layer, CLS dropped before the projector)."""
    vision = config.vision_config
    if vision.model_type != "clip_vision_model":
        raise WeightsError(f"vision tower {vision.model_type!r} is not supported (expected a CLIP vision tower)")
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise WeightsError(f"vision_feature_layer={layer!r}: only a single feature layer is supported")
    if config.vision_feature_select_strategy != "default":
        raise WeightsError(
            f"vision_feature_select_strategy={config.vision_feature_select_strategy!r} is not supported (expected 'default')"
        )
    hidden_index = layer % (vision.num_hidden_layers + 1)  # index into hidden_states: num_layers + 1 entries
    if hidden_index == 0:
        raise WeightsError("vision_feature_layer selects the embeddings, which have no attention to prune by")
    grid = vision.image_size // vision.patch_size
    return Geometry(
        image_height=vision.image_size, image_width=vision.image_size, grid_rows=grid, grid_cols=grid, cls_token=True,
        vision_width=vision.hidden_size, num_heads=vision.num_attention_heads,
        head_dim=vision.hidden_size // vision.num_attention_heads, llm_width=config.text_config.hidden_size,
        feature_layer=hidden_index - 1, crops=crops, tile_rows=tile_rows, tile_cols=tile_cols,
    )


def llava_vision_key(checkpoint_key: str) -> str | None:
    """LLaVA checkpoint key -> tower.* / projector.*; both layouts: `vision_tower.vision_model.*` (the hub,
    transformers 4.x) and `vision_tower.*` / `model.vision_tower.*` (transformers 5.x)."""
    key = checkpoint_key.removeprefix("model.")
    if key.startswith("vision_tower."):
        return "tower." + key.removeprefix("vision_tower.").removeprefix("vision_model.")
    if key.startswith("multi_modal_projector."):
        return "projector." + key.removeprefix("multi_modal_projector.")
    return None


def clip_text_key(checkpoint_key: str) -> str | None:
    """CLIP checkpoint key -> text.* / visual_projection.*, or None for the vision side."""
    key = checkpoint_key.removeprefix("model.")
    if key.startswith("visual_projection."):
        return key
    if key.startswith(("text_model.", "text_projection.")):
        return "text." + key
    return None


def check_clip_matches(clip: CLIPConfig, config: Any, where: str) -> None:
    width, projection = config.vision_config.hidden_size, clip.projection_dim
    if clip.vision_config.hidden_size != width or clip.text_config.projection_dim != projection:
        raise WeightsError(
            f"{where}: its CLIP projections (vision width {clip.vision_config.hidden_size}, text projection "
            f"{clip.text_config.projection_dim}, joint {projection}) do not fit this vision tower (width {width})"
        )


def clip_image_processor_settings(size: int) -> dict:
    """llava-hf's processor settings for CLIP at this image size: resize the shortest edge (bicubic), center
    crop, rescale by 1/255, normalise with CLIP's mean and std, convert to RGB."""
    from PIL import Image

    return dict(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                resample=Image.Resampling.BICUBIC, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255,
                do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True)


def clip_preprocess(images: list, size: int) -> np.ndarray:
    """(B, 3, S, S) float32 exactly as LLaVA-1.5's processor (the PIL backend, its behaviour without
    torchvision and the original one)."""
    import numpy as np
    from transformers import CLIPImageProcessorPil

    processor = CLIPImageProcessorPil(**clip_image_processor_settings(size))
    return processor(images, return_tensors="np")["pixel_values"].astype(np.float32)
