"""LLaVA-NeXT (LLaVA-1.6) with a static AnyRes grid: the CLIP tower of LLaVA-1.5 over the base image and R x C
tiles, one batch of crops, with per-crop budgets (K / crops tokens of each crop, laid out by models/layout.py
AnyResLayout) or one budget per image where the method's official NeXT path has one (HoloV).

Checkpoints: llava-hf/llava-v1.6-vicuna-7b-hf and llava-v1.6-mistral-7b-hf layouts
(LlavaNextForConditionalGeneration; the text model is read from the config). The grid is fixed at export
(`--grid RxC`, default 2x2: 672x672 for 336-px towers, the pruning papers' convention) and must be one of the
checkpoint's image_grid_pinpoints. The vision graph takes pixel_values (B, 1 + R*C, 3, S, S): the base
image, then the tiles in raster order, as HF's processor makes them when forced to that grid. No unpadding
and no image_newline: the official pruning repositories insert none (methods-spec.md); the runtime's
layout="hf" adds both for the unpruned model, as HF's pack_image_features does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vtp_export.contract import Geometry, VisionStack
from vtp_export.errors import UsageError, WeightsError
from vtp_export.models.base import ModelOption, parse_size, register
from vtp_export.models.clip import clip_geometry, clip_image_processor_settings
from vtp_export.models.llava15 import Llava15, ToyWidth, tiny_llama_text
from vtp_export.models.token_index import decode_token_index

if TYPE_CHECKING:
    import numpy as np
    from torch import nn
    from transformers import LlavaNextConfig

    from vtp_export.contract import MethodRequirements

# llava-hf's LLaVA-1.6 checkpoints: (height, width) canvases of 336-px tiles.
PINPOINTS_336 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@register
class LlavaNext(Llava15):
    name = "llava-next"
    summary = "LLaVA-NeXT / 1.6 (CLIP ViT-L/14-336 on a static AnyRes grid, MLP projector, Vicuna-7B or Mistral-7B)"
    model_type = "llava_next"
    canonical_repo = "llava-hf/llava-v1.6-vicuna-7b-hf"
    hf_class = "LlavaNextForConditionalGeneration"
    image_newline_keys = ("image_newline", "model.image_newline")
    options = (ModelOption("grid", "the AnyRes tile grid RxC, fixed at export; R*S x C*S must be one of the "
                                   "checkpoint's image_grid_pinpoints", "2x2"),)

    def default_config(self, image_size: int = 336) -> LlavaNextConfig:
        from transformers import LlavaNextConfig

        scale = image_size / 336
        return LlavaNextConfig(
            vision_config=self.vision_settings(image_size), text_config=self.text_settings(), image_token_id=32000,
            projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
            image_grid_pinpoints=[[int(h * scale), int(w * scale)] for h, w in PINPOINTS_336],
        )

    def config_from_dict(self, raw: dict) -> LlavaNextConfig:
        from transformers import LlavaNextConfig

        return LlavaNextConfig.from_dict(raw)

    def geometry(self, config: Any, options: dict[str, str]) -> Geometry:
        rows, cols = parse_size(options.get("grid") or self.options[0].default, "--grid")
        size = config.vision_config.image_size
        canvases = [list(p) for p in config.image_grid_pinpoints]
        if [rows * size, cols * size] not in canvases:
            grids = ", ".join(f"{h // size}x{w // size}" for h, w in canvases if h % size == 0 and w % size == 0)
            raise UsageError(f"--grid {rows}x{cols} ({rows * size}x{cols * size} px) is not one of this checkpoint's "
                             f"image_grid_pinpoints: use one of {grids}")
        return clip_geometry(config, crops=1 + rows * cols, tile_rows=rows, tile_cols=cols)

    def build_vision(self, config: Any) -> tuple[nn.Module, nn.Module]:
        from transformers import CLIPVisionModel
        from transformers.models.llava_next.modeling_llava_next import LlavaNextMultiModalProjector

        return CLIPVisionModel(config.vision_config).float().eval(), LlavaNextMultiModalProjector(config).float().eval()

    def feature_extractor(self, stack: VisionStack, method: MethodRequirements) -> nn.Module:
        from vtp_export.models.layout import AnyResCrops
        from vtp_export.towers.clip import ClipFeatures

        return AnyResCrops(ClipFeatures(stack, method), stack.geometry)

    def token_layout(self, geometry: Geometry) -> nn.Module:
        from vtp_export.models.layout import AnyResLayout

        return AnyResLayout(geometry)

    def preprocess(self, images: list, geometry: Geometry) -> np.ndarray:
        """(B, 1 + R*C, 3, S, S) float32 with HF's LLaVA-NeXT processor (PIL backend) forced to the export's grid:
        the base image squashed to S x S, then the image resized keeping its aspect, padded black to the
        canvas, cut into tiles in raster order."""
        import numpy as np
        from transformers import LlavaNextImageProcessorPil

        size = geometry.image_height
        canvas = [[geometry.tile_rows * size, geometry.tile_cols * size]]
        processor = LlavaNextImageProcessorPil(**clip_image_processor_settings(size), image_grid_pinpoints=canvas)
        return processor(images, return_tensors="np")["pixel_values"].astype(np.float32)

    def prompt(self, content: str, config: Any) -> str:
        """The checkpoints' chat templates: llava-v1.6-mistral's `[INST] ... [/INST]`, llava-v1.6-vicuna's
        LLaVA-1.5 form."""
        if config.text_config.model_type == "mistral":
            return f"[INST] {content} [/INST]"
        return super().prompt(content, config)

    def image_positions(self, start: int, token_index: np.ndarray, geometry: Geometry,
                        policy: str) -> tuple[np.ndarray, int]:
        """original: each token keeps its source's place in the unpruned static sequence, the base crop's
        patches then the tiles' in full-grid raster order; the rest as on LLaVA-1.5."""
        import numpy as np

        if policy == "sequential":
            return super().image_positions(start, token_index, geometry, policy)
        n, g, cols = geometry.num_patches, geometry.grid, geometry.tile_cols
        crop, within = decode_token_index(token_index, n)
        tile_row, tile_col = np.divmod(np.maximum(crop - 1, 0), cols)
        patch_row, patch_col = np.divmod(np.maximum(within - 1, 0), g)
        grid_position = n + (tile_row * g + patch_row) * (cols * g) + tile_col * g + patch_col
        offsets = np.where(crop == 0, within - 1, grid_position)
        offsets = np.where((token_index >= 0) & (within >= 1), offsets, geometry.tokens_per_image - 1)
        return (start + offsets).astype(np.int64), start + geometry.tokens_per_image

    def hf_layout(self, embeds: np.ndarray, image_size: tuple[int, int], geometry: Geometry,
                  newline: np.ndarray) -> np.ndarray:
        """The unpruned image's tokens (base crop, then the full-grid raster) as HF's pack_image_features lays
        them out: the grid unpadded by the original (height, width), image_newline after every grid row."""
        import numpy as np

        n, g = geometry.num_patches, geometry.grid
        rows, cols = geometry.tile_rows * g, geometry.tile_cols * g
        grid = embeds[n:].reshape(rows, cols, -1)
        height, width = image_size
        if width / height > cols / rows:  # transformers' unpad_image
            cut = (rows - int(round(height * (cols / width), 7))) // 2
            grid = grid[cut:rows - cut]
        else:
            cut = (cols - int(round(width * (rows / height), 7))) // 2
            grid = grid[:, cut:cols - cut]
        lines = np.broadcast_to(newline, (grid.shape[0], 1, grid.shape[2]))
        return np.concatenate([embeds[:n], np.concatenate([grid, lines], axis=1).reshape(-1, grid.shape[2])])

    def check_llm_config(self, config: Any, geometry: Geometry, where: str) -> None:
        super().check_llm_config(config, geometry, where)
        if config.text_config.model_type not in ("llama", "mistral"):
            raise WeightsError(f"{where}: a {config.text_config.model_type!r} language model; llava-next reads the "
                               "Vicuna (llama) and Mistral layouts")


@register
class LlavaNextTiny(ToyWidth, LlavaNext):
    name = "llava-next-tiny"
    summary = "LLaVA-NeXT architecture at toy width (tests); always random weights"

    def text_settings(self) -> dict:
        return tiny_llama_text() | {"max_position_embeddings": 4096}  # the unpruned image alone is 2880 tokens
