"""LLaVA-1.5: CLIP ViT-L/14-336 up to feature layer -2 (CLS dropped), 2-layer GELU MLP projector, Vicuna-7B.

Checkpoints: llava-hf/llava-1.5-7b-hf layout (transformers LlavaForConditionalGeneration), either key layout.
`llava15-tiny` is the same architecture at toy width with the real 576-token grid (tests, quickstart).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vtp_export.contract import Geometry, VisionStack
from vtp_export.models.base import VisionLanguageModel, register
from vtp_export.models.clip import (
    CLIP_SIGNALS, clip_config, clip_geometry, clip_l336_text, clip_l336_vision, clip_preprocess, llava_vision_key,
    tiny_text, tiny_vision,
)

if TYPE_CHECKING:
    import numpy as np
    from torch import nn
    from transformers import CLIPConfig, LlavaConfig

    from vtp_export.contract import MethodRequirements


def vicuna7b_text() -> dict:
    return dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096,
                rms_norm_eps=1e-5)


def tiny_llama_text() -> dict:
    return dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=4, vocab_size=32064, max_position_embeddings=2048)


@register
class Llava15(VisionLanguageModel):
    name = "llava15"
    summary = "LLaVA-1.5 (CLIP ViT-L/14-336, MLP projector, Vicuna-7B)"
    model_type = "llava"
    signals = CLIP_SIGNALS
    image_token = image_pad_token = "<image>"
    canonical_repo = "llava-hf/llava-1.5-7b-hf"
    canonical_clip_repo: str | None = "openai/clip-vit-large-patch14-336"
    hf_class = "LlavaForConditionalGeneration"

    def vision_settings(self, image_size: int = 336) -> dict:
        return clip_l336_vision()

    def text_settings(self) -> dict:
        return vicuna7b_text()

    def clip_text_settings(self) -> dict:
        return clip_l336_text()

    def default_config(self, image_size: int = 336) -> LlavaConfig:
        from transformers import LlavaConfig

        return LlavaConfig(
            vision_config=self.vision_settings(image_size), text_config=self.text_settings(), image_token_id=32000,
            projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default",
        )

    def default_clip_config(self, image_size: int = 336) -> CLIPConfig:
        """The CLIP model the vision tower comes from; text-conditioned methods need its text side."""
        return clip_config(self.vision_settings(image_size), self.clip_text_settings())

    def config_from_dict(self, raw: dict) -> LlavaConfig:
        from transformers import LlavaConfig

        return LlavaConfig.from_dict(raw)

    def geometry(self, config: Any, options: dict[str, str]) -> Geometry:
        return clip_geometry(config)

    def vision_key(self, checkpoint_key: str) -> str | None:
        return llava_vision_key(checkpoint_key)

    def build_vision(self, config: Any) -> tuple[nn.Module, nn.Module]:
        from transformers import CLIPVisionModel
        from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

        return CLIPVisionModel(config.vision_config).float().eval(), LlavaMultiModalProjector(config).float().eval()

    def feature_extractor(self, stack: VisionStack, method: MethodRequirements) -> nn.Module:
        from vtp_export.towers.clip import ClipFeatures

        return ClipFeatures(stack, method)

    def preprocess(self, images: list, geometry: Geometry) -> np.ndarray:
        return clip_preprocess(images, geometry.image_height)

    def prompt(self, content: str, config: Any) -> str:
        return f"USER: {content} ASSISTANT:"  # llava-hf's LLaVA-1.5 conversation template

    def stand_in_tokenizer(self, config: Any) -> Any:
        from vtp_export.models.tokenizer import stand_in_llama_tokenizer

        return stand_in_llama_tokenizer(config.text_config.vocab_size, {config.image_token_id: self.image_token})


class ToyWidth:
    """Mixed into a CLIP-tower model: the same architecture at toy width (the real patch grid), only ever with
    seeded random weights."""

    canonical_repo = None
    canonical_clip_repo = None
    random_only = True

    def vision_settings(self, image_size: int = 336) -> dict:
        return tiny_vision(image_size)

    def text_settings(self) -> dict:
        return tiny_llama_text()

    def clip_text_settings(self) -> dict:
        return tiny_text()


@register
class Llava15Tiny(ToyWidth, Llava15):
    name = "llava15-tiny"
    summary = "LLaVA-1.5 architecture at toy width (tests, quickstart); always random weights"
