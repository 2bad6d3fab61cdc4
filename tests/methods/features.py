"""Random VisionFeatures and a real LLaVA projector for method tests."""

from dataclasses import fields, replace

import torch
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from vtp_export.contract import Geometry, VisionFeatures
from vtp_export.export.graph import PruningStage
from vtp_export.methods.base import PruningMethod
from vtp_export.models import MODELS
from vtp_export.models.layout import AnyResLayout, OneCrop, anyres_sequence

CLIP_WIDTH = 16  # llava15-tiny's CLIP joint embedding width
TINY = MODELS.get("llava15-tiny")


def tiny_geometry(image_size: int = 336) -> Geometry:
    return TINY.geometry(TINY.default_config(image_size), {})


def tiny_projector(seed: int = 0) -> LlavaMultiModalProjector:
    torch.manual_seed(seed)
    return LlavaMultiModalProjector(TINY.default_config()).eval()


def random_features(geometry: Geometry, batch: int = 2, seed: int = 0, peaked: bool = False) -> VisionFeatures:
    """Features with attention logits of unit spread, or `peaked` into a few patches (crop overflow)."""
    g = torch.Generator().manual_seed(seed)
    length, heads = geometry.sequence_length, geometry.num_heads
    logits = torch.randn(batch, heads, length, generator=g)
    if peaked:
        logits[:, :, 1:40] += 8.0
    width = geometry.vision_width
    return VisionFeatures(
        hidden=torch.randn(batch, length, width, generator=g),
        cls_attention=torch.softmax(logits, dim=-1),
        keys=torch.randn(batch, heads, length, geometry.head_dim, generator=g),
        next_cls_attention=torch.softmax(torch.randn(batch, length, generator=g) * 2, dim=-1),
        next_keys=torch.randn(batch, length, width, generator=g),
        clip_patch_embeds=torch.randn(batch, length - 1, CLIP_WIDTH, generator=g),
        text_embeds=torch.randn(batch, CLIP_WIDTH, generator=g),
    )


def batch_item(features: VisionFeatures, index: int) -> VisionFeatures:
    return replace(features, **{f.name: getattr(features, f.name)[index:index + 1] for f in fields(features)
                                if isinstance(getattr(features, f.name), torch.Tensor)})


def run_method(method: PruningMethod, features: VisionFeatures, projector: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """What the vision graph makes of the features: the method's selection applied and projected, laid out as the
    model lays out its crops (LLaVA-NeXT's AnyRes layout where the geometry has several)."""
    geometry = method.geometry
    if geometry.crops == 1:
        return PruningStage(method, projector, OneCrop())(features)
    features.image_sequence = anyres_sequence(geometry)[0]
    return PruningStage(method, projector, AnyResLayout(geometry))(features)
