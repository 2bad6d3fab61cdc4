"""Qwen2.5-VL and Qwen3-VL on vLLM with pruned image embeddings (vtp-export's vLLM plugin: serve/vllm_plugin.py
registers them).

Stock vLLM sizes an image's placeholder run by its grid (h * w / 4 tokens) and lays the tokens on that dense grid
for M-RoPE; a pruned image has K tokens of that grid. These models, on vLLM's own Qwen classes:
- take image data of image_embeds, image_grid_thw and image_token_index only (vllm_plugin.py checks them before the
  engine sees them), and expand each image's placeholder to its K tokens;
- give kept token r (token_index r + 1) of an h x w merged grid the position (s, s + r // w, s + r % w) and resume
  the text at s + max(h, w), as HF's get_rope_index of the unpruned prompt gathered at the kept tokens
  (models/qwen2_5_vl.py original_image_positions, the transformers backend's positions);
- Qwen3-VL: each embedding row carries its DeepStack levels after it (vLLM's layout), which vLLM's Qwen3-VL splits
  off and adds after decoder layer i at the image tokens. vLLM turns DeepStack off where the vision tower is not
  built (no image limit: embeddings only), so this model turns it back on, with its buffers.
Serving venv only: this module imports vLLM."""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import Qwen2VLMultiModalDataParser
from vllm.model_executor.models.qwen3_vl import (
    Qwen3VLDummyInputsBuilder, Qwen3VLForConditionalGeneration, Qwen3VLMultiModalProcessor, Qwen3VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import DictEmbeddingItems
from vllm.multimodal.processing import PromptReplacement

from vtp_export.models.qwen2_5_vl import original_image_positions
from vtp_export.models.qwen3_vl import deepstack_level_count
from vtp_export.serve.vllm_plugin import IMAGE_EMBEDS, IMAGE_GRID_THW, IMAGE_TOKEN_INDEX, check_image_data


def pruned_fields(data: Mapping[str, torch.Tensor]) -> dict[str, MultiModalFieldConfig]:
    kept = data[IMAGE_TOKEN_INDEX]
    return {IMAGE_EMBEDS: MultiModalFieldConfig.flat_from_sizes("image", torch.full((len(kept),), kept.shape[1])),
            IMAGE_GRID_THW: MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            IMAGE_TOKEN_INDEX: MultiModalFieldConfig.batched("image", keep_on_cpu=True)}


class PrunedDataParser(Qwen2VLMultiModalDataParser):
    embedding_fields = {"image": {IMAGE_EMBEDS: "values", IMAGE_GRID_THW: "metadata", IMAGE_TOKEN_INDEX: "metadata"}}

    def __init__(self, spatial_merge_size: int, levels: int, **kwargs: Any) -> None:
        super().__init__(spatial_merge_size, **kwargs)
        self.levels = levels

    def _parse_image_data(self, data):
        check_image_data(data, self._spatial_merge_size, self.expected_hidden_size, self.levels)
        required, optional = self.embedding_field_sets("image")
        return DictEmbeddingItems(data, modality="image", required_fields=required, optional_fields=optional,
                                  fields_factory=pruned_fields)

    def _parse_video_data(self, data):
        raise ValueError("this model serves pruned image embeddings; it takes no video")


class PrunedProcessingInfo:
    """Mixed into vLLM's Qwen processing info: the data parser of pruned image data."""

    def get_data_parser(self):
        config = self.get_hf_config()
        return PrunedDataParser(config.vision_config.spatial_merge_size, deepstack_level_count(config),
                                expected_hidden_size=self._get_expected_hidden_size())


class PrunedProcessor:
    """Mixed into vLLM's Qwen multimodal processor: the pruned fields, K placeholders per image."""

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        return pruned_fields(hf_inputs)

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptReplacement]:
        image_token_id = self.info.get_hf_config().image_token_id

        def kept_tokens(item: int) -> list[int]:
            return [image_token_id] * out_mm_kwargs["image"][item][IMAGE_TOKEN_INDEX].data.shape[0]

        return [PromptReplacement(modality="image", target=[image_token_id], replacement=kept_tokens)]


class PrunedImages:
    """Mixed into vLLM's Qwen model: the image embeddings as given, the kept tokens at their original positions."""

    def embed_multimodal(self, **kwargs: object) -> tuple[torch.Tensor, ...]:
        embeds, kept = kwargs.get(IMAGE_EMBEDS), kwargs.get(IMAGE_TOKEN_INDEX)
        if embeds is None:
            return ()
        embeds = torch.cat(list(embeds)) if isinstance(embeds, (list, tuple)) else embeds
        sizes = [len(index) for index in kept]
        return tuple(embeds.to(self.model_config.dtype).split(sizes))

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list[Any]) -> tuple[torch.Tensor, int]:
        merge = self.config.vision_config.spatial_merge_size
        pieces, cursor, position = [], 0, 0
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            token_index = feature.data[IMAGE_TOKEN_INDEX].data.numpy()
            _, height, width = feature.data[IMAGE_GRID_THW].data.tolist()
            text = feature.mm_position.offset - cursor
            pieces.append(np.broadcast_to(np.arange(position, position + text), (3, text)))
            image, position = original_image_positions(position + text, token_index, height // merge, width // merge)
            pieces.append(image)
            cursor = feature.mm_position.offset + len(token_index)
        text = len(input_tokens) - cursor
        pieces.append(np.broadcast_to(np.arange(position, position + text), (3, text)))
        positions = np.concatenate(pieces, axis=1).astype(np.int64)
        return torch.from_numpy(positions), int(positions.max()) + 1 - len(input_tokens)


class PrunedQwen2_5_VLProcessingInfo(PrunedProcessingInfo, Qwen2_5_VLProcessingInfo):
    pass


class PrunedQwen2_5_VLProcessor(PrunedProcessor, Qwen2_5_VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(PrunedQwen2_5_VLProcessor, info=PrunedQwen2_5_VLProcessingInfo,
                                        dummy_inputs=Qwen2_5_VLDummyInputsBuilder)
class VtpQwen2_5_VLForConditionalGeneration(PrunedImages, Qwen2_5_VLForConditionalGeneration):
    pass


class PrunedQwen3VLProcessingInfo(PrunedProcessingInfo, Qwen3VLProcessingInfo):
    pass


class PrunedQwen3VLProcessor(PrunedProcessor, Qwen3VLMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(PrunedQwen3VLProcessor, info=PrunedQwen3VLProcessingInfo,
                                        dummy_inputs=Qwen3VLDummyInputsBuilder)
class VtpQwen3VLForConditionalGeneration(PrunedImages, Qwen3VLForConditionalGeneration):
    def __init__(self, *, vllm_config: Any, prefix: str = "model") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        levels, hidden = deepstack_level_count(self.config), self.config.text_config.hidden_size
        self.use_deepstack, self.deepstack_num_level = levels > 0, levels
        self.visual_dim, self.multiscale_dim = hidden, hidden * levels
        # vLLM's Qwen3-VL buffers, as it allocates them with its tower (under vLLM's default device and dtype)
        tokens = vllm_config.scheduler_config.max_num_batched_tokens
        self.deepstack_input_embeds = [torch.zeros(tokens, hidden) for _ in range(levels)]
        self.deepstack_input_embeds_num_tokens = 0
