"""Model registry: one declarative entry per supported architecture, plus what the export needs of it."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, CLIPVisionModel
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from vtp_export.errors import WeightsError
from vtp_export.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    name: str
    summary: str
    make_config: Callable[[], LlavaConfig]
    # HF hub id looked up (offline) in the local HF cache when no --weights is given;
    # None for architectures that exist only as random test checkpoints.
    canonical_repo: str | None = None


MODELS: Registry[ModelSpec] = Registry("model")


def llava15_config() -> LlavaConfig:
    """llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 (feature layer -2) + 2-layer GELU MLP into Vicuna-7B."""
    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=32000, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )


def llava15_tiny_config(image_size: int = 336) -> LlavaConfig:
    """The LLaVA-1.5 architecture at toy width: same patch grid (576 tokens at 336 px), 4 layers."""
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        image_size=image_size, patch_size=14, projection_dim=16, hidden_act="quick_gelu",
    )
    text = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=32064, max_position_embeddings=2048,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=32000, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )


MODELS.add("llava15", ModelSpec(
    "llava15", "LLaVA-1.5 (CLIP ViT-L/14-336, MLP projector, Vicuna-7B)", llava15_config,
    canonical_repo="llava-hf/llava-1.5-7b-hf",
))
MODELS.add("llava15-tiny", ModelSpec(
    "llava15-tiny", "LLaVA-1.5 architecture at toy width (tests, quickstart); always random weights",
    llava15_tiny_config,
))


@dataclass(frozen=True)
class Geometry:
    """Static sizes of the exported vision graph, all read from the checkpoint's config."""

    image_size: int
    patch_size: int
    grid: int  # patches per side
    num_patches: int  # N; the encoder sequence is [CLS] + N patches
    vision_width: int
    num_heads: int
    head_dim: int
    llm_width: int
    feature_layer: int  # index of the encoder layer whose output LLaVA feeds to the projector

    @property
    def sequence_length(self) -> int:
        return self.num_patches + 1


def geometry_of(config: LlavaConfig) -> Geometry:
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
    num_layers = vision.num_hidden_layers
    hidden_index = layer % (num_layers + 1)  # index into hidden_states, which has num_layers + 1 entries
    if hidden_index == 0:
        raise WeightsError("vision_feature_layer selects the embeddings, which have no attention to prune by")
    grid = vision.image_size // vision.patch_size
    return Geometry(
        image_size=vision.image_size,
        patch_size=vision.patch_size,
        grid=grid,
        num_patches=grid * grid,
        vision_width=vision.hidden_size,
        num_heads=vision.num_attention_heads,
        head_dim=vision.hidden_size // vision.num_attention_heads,
        llm_width=config.text_config.hidden_size,
        feature_layer=hidden_index - 1,
    )


@dataclass
class VisionStack:
    """The part of a LLaVA checkpoint that goes into the vision graph."""

    config: LlavaConfig
    tower: CLIPVisionModel
    projector: LlavaMultiModalProjector
    source: str  # where the weights came from, recorded in config.json

    @property
    def geometry(self) -> Geometry:
        return geometry_of(self.config)

    def parameter_bytes(self) -> int:
        modules = (self.tower, self.projector)
        return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def build_vision_stack(config: LlavaConfig) -> tuple[CLIPVisionModel, LlavaMultiModalProjector]:
    """Vision tower and projector of `config`, float32, eval mode, with the initialisation of HF."""
    tower = CLIPVisionModel(config.vision_config).float().eval()
    projector = LlavaMultiModalProjector(config).float().eval()
    return tower, projector


def random_vision_stack(config: LlavaConfig, seed: int) -> VisionStack:
    geometry_of(config)
    torch.manual_seed(seed)
    tower, projector = build_vision_stack(config)
    return VisionStack(config, tower, projector, source=f"random(seed={seed})")
