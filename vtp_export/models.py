"""Model registry: one declarative entry per supported architecture, plus what the export needs of it."""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    CLIPConfig, CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlavaConfig,
)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from vtp_export.errors import WeightsError
from vtp_export.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    name: str
    summary: str
    make_config: Callable[[], LlavaConfig]
    # The CLIP model the vision tower comes from; text-conditioned methods need its text side.
    make_clip_config: Callable[[], CLIPConfig]
    # HF hub ids looked up (offline) in the local HF cache when no --weights / --text-weights is given;
    # None for architectures that exist only as random test checkpoints.
    canonical_repo: str | None = None
    canonical_clip_repo: str | None = None


MODELS: Registry[ModelSpec] = Registry("model")


def clip_l336_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
    )


def clip_l336_config() -> CLIPConfig:
    """openai/clip-vit-large-patch14-336, the CLIP model LLaVA-1.5's vision tower is taken from."""
    text = CLIPTextConfig(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu",
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=clip_l336_vision_config().to_dict(), projection_dim=768)


def llava15_config() -> LlavaConfig:
    """llava-hf/llava-1.5-7b-hf: CLIP ViT-L/14-336 (feature layer -2) + 2-layer GELU MLP into Vicuna-7B."""
    vision = clip_l336_vision_config()
    text = LlamaConfig(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32064, max_position_embeddings=4096, rms_norm_eps=1e-5,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=32000, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )


def tiny_vision_config(image_size: int = 336) -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        image_size=image_size, patch_size=14, projection_dim=16, hidden_act="quick_gelu",
    )


def clip_tiny_config(image_size: int = 336) -> CLIPConfig:
    """CLIP at toy width with CLIP's real tokenizer space (49408 ids, 77 positions)."""
    text = CLIPTextConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, vocab_size=49408, projection_dim=16, hidden_act="quick_gelu",
    )
    return CLIPConfig(text_config=text.to_dict(), vision_config=tiny_vision_config(image_size).to_dict(), projection_dim=16)


def llava15_tiny_config(image_size: int = 336) -> LlavaConfig:
    """The LLaVA-1.5 architecture at toy width: same patch grid (576 tokens at 336 px), 4 layers."""
    vision = tiny_vision_config(image_size)
    text = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, vocab_size=32064, max_position_embeddings=2048,
    )
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=32000, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )


MODELS.add("llava15", ModelSpec(
    "llava15", "LLaVA-1.5 (CLIP ViT-L/14-336, MLP projector, Vicuna-7B)", llava15_config, clip_l336_config,
    canonical_repo="llava-hf/llava-1.5-7b-hf", canonical_clip_repo="openai/clip-vit-large-patch14-336",
))
MODELS.add("llava15-tiny", ModelSpec(
    "llava15-tiny", "LLaVA-1.5 architecture at toy width (tests, quickstart); always random weights",
    llava15_tiny_config, clip_tiny_config,
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
class ClipText:
    """What text-conditioned methods add from the CLIP model: its text tower with projection, and the
    visual projection into the same joint space (LLaVA's checkpoint carries neither)."""

    config: CLIPConfig
    text: CLIPTextModelWithProjection
    visual_projection: nn.Linear
    source: str

    @property
    def max_length(self) -> int:
        return self.config.text_config.max_position_embeddings

    @property
    def embed_width(self) -> int:
        return self.config.projection_dim


def check_clip_matches(clip_config: CLIPConfig, config: LlavaConfig, where: str) -> None:
    width, projection = config.vision_config.hidden_size, clip_config.projection_dim
    if clip_config.vision_config.hidden_size != width or clip_config.text_config.projection_dim != projection:
        raise WeightsError(
            f"{where}: its CLIP projections (vision width {clip_config.vision_config.hidden_size}, text projection "
            f"{clip_config.text_config.projection_dim}, joint {projection}) do not fit this vision tower (width {width})"
        )


def build_clip_text(clip_config: CLIPConfig, source: str) -> ClipText:
    text = CLIPTextModelWithProjection(clip_config.text_config).float().eval()
    projection = nn.Linear(clip_config.vision_config.hidden_size, clip_config.projection_dim, bias=False).float().eval()
    return ClipText(clip_config, text, projection, source)


def random_clip_text(clip_config: CLIPConfig, seed: int) -> ClipText:
    torch.manual_seed(seed + 1)
    return build_clip_text(clip_config, source=f"random(seed={seed})")


@dataclass
class VisionStack:
    """The part of a LLaVA checkpoint that goes into the vision graph (and CLIP's text side where needed)."""

    config: LlavaConfig
    tower: CLIPVisionModel
    projector: LlavaMultiModalProjector
    source: str  # where the weights came from, recorded in config.json
    clip: ClipText | None = None

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
