"""Which models vLLM serves from an export, as what: the vLLM architecture of each HF model type, and the processor
files vLLM builds its (never used: no pixels reach it) HF processor from. Torch-free."""

from dataclasses import dataclass
from typing import Any

from vtp_export.contract import Geometry
from vtp_export.errors import UsageError
from vtp_export.models.clip import CLIP_MEAN, CLIP_STD
from vtp_export.models.qwen3_vl import PROCESSOR_MEAN as QWEN3_MEAN
from vtp_export.models.qwen3_vl import PROCESSOR_STD as QWEN3_STD

# The Qwen models of vtp-export's vLLM plugin (serve/vllm_plugin.py): kept tokens at their original M-RoPE positions
# from token_index, K placeholders per image; Qwen3-VL's image embeddings carry their DeepStack levels.
QWEN2_5_VL_PLUGIN = "VtpQwen2_5_VLForConditionalGeneration"
QWEN3_VL_PLUGIN = "VtpQwen3VLForConditionalGeneration"


@dataclass(frozen=True)
class ServedModel:
    model_type: str  # the HF config's
    architecture: str  # the vLLM model class that runs it
    plugin: bool  # the architecture is vtp-export's (registered by serve/vllm_plugin.py), not stock vLLM's

    def processor_files(self, config: Any, geometry: Geometry) -> dict[str, dict]:
        """JSON files (name -> content) of the HF processor vLLM instantiates for the model."""
        if self.model_type in ("llava", "llava_next"):
            size = geometry.image_height
            image = {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
                     "do_center_crop": True, "crop_size": {"height": size, "width": size}, "do_rescale": True,
                     "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
                     "image_std": list(CLIP_STD), "do_convert_rgb": True, "resample": 3}
            processor = {"processor_class": "LlavaProcessor", "patch_size": config.vision_config.patch_size,
                         "vision_feature_select_strategy": config.vision_feature_select_strategy,
                         "num_additional_image_tokens": 1, "image_token": "<image>"}
            if self.model_type == "llava_next":
                image |= {"image_processor_type": "LlavaNextImageProcessor",
                          "image_grid_pinpoints": config.image_grid_pinpoints}
                processor["processor_class"] = "LlavaNextProcessor"
            return {"preprocessor_config.json": image, "processor_config.json": processor}
        vision = config.vision_config
        image = {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": vision.patch_size,
                 "temporal_patch_size": vision.temporal_patch_size, "merge_size": vision.spatial_merge_size,
                 "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "min_pixels": 3136,
                 "max_pixels": 12845056}
        video, processor = image | {"video_processor_type": "Qwen2VLVideoProcessor"}, "Qwen2_5_VLProcessor"
        if self.model_type == "qwen3_vl":  # as the Qwen3-VL checkpoints' preprocessor files
            del image["min_pixels"], image["max_pixels"]
            image |= {"image_mean": list(QWEN3_MEAN), "image_std": list(QWEN3_STD),
                      "size": {"shortest_edge": 65536, "longest_edge": 16777216}}
            video = image | {"video_processor_type": "Qwen3VLVideoProcessor",
                             "size": {"shortest_edge": 4096, "longest_edge": 25165824}}
            processor = "Qwen3VLProcessor"
        del video["image_processor_type"]
        return {"preprocessor_config.json": image, "video_preprocessor_config.json": video,
                "processor_config.json": {"processor_class": processor}}


SERVED_MODELS = {served.model_type: served for served in (
    ServedModel("llava", "LlavaForConditionalGeneration", plugin=False),
    ServedModel("llava_next", "LlavaNextForConditionalGeneration", plugin=False),
    ServedModel("qwen2_5_vl", QWEN2_5_VL_PLUGIN, plugin=True),
    ServedModel("qwen3_vl", QWEN3_VL_PLUGIN, plugin=True),
)}


def served_model(model_type: str, name: str) -> ServedModel:
    if model_type not in SERVED_MODELS:
        raise UsageError(f"vtp-export serve runs {', '.join(sorted(SERVED_MODELS))} models on vLLM; {name} is "
                         f"{model_type!r}")
    return SERVED_MODELS[model_type]
