"""Seeded random tiny LLaVA towers of drawn shapes for the parity sweep, and the official signals read off
HF's own modules (eager attention, hidden_states, attentions), independently of vtp_export/towers.

A shape is drawn from SWEEP_SEED (fixed, so CI is reproducible; VTP_SWEEP_SEED=N draws another set), never
picked to pass: image size and patch grid, heads, head width, depth, feature layer, LLM width, CLIP's
joint width, and flat or peaked attention (q/k projections scaled x6, as in a trained CLIP).
"""

import os
import random
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
from torch import Tensor
from transformers import CLIPConfig, CLIPTextModelWithProjection, LlavaConfig, LlavaNextConfig

from vtp_export.contract import ClipText, Geometry, RandomWeights, VisionStack
from vtp_export.models import MODELS
from vtp_export.onnx.inputs import random_input_ids, random_pixel_values

SWEEP_SEED = int(os.environ.get("VTP_SWEEP_SEED", "18"))
PEAKED_QK_SCALE = 6.0
LLAVA15, NEXT = MODELS.get("llava15"), MODELS.get("llava-next")


@dataclass(frozen=True)
class TowerShape:
    index: int
    patch: int
    side: int  # patch grid side: N = side^2
    heads: int
    head_dim: int
    layers: int
    feature_layer: int  # LLaVA's vision_feature_layer (negative)
    llm_width: int
    joint_width: int  # CLIP's projection_dim
    peaked: bool

    @property
    def image_size(self) -> int:
        return self.patch * self.side

    @property
    def num_patches(self) -> int:
        return self.side ** 2

    def __str__(self) -> str:
        return (f"{self.image_size}px-p{self.patch}-w{self.heads * self.head_dim}h{self.heads}-L{self.layers}"
                f"f{self.feature_layer}-D{self.llm_width}-{'peaked' if self.peaked else 'flat'}")

    def vision(self) -> dict:
        width = self.heads * self.head_dim
        return dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=self.layers,
                    num_attention_heads=self.heads, image_size=self.image_size, patch_size=self.patch,
                    projection_dim=self.joint_width, hidden_act="quick_gelu")

    def text(self) -> dict:
        return dict(model_type="llama", hidden_size=self.llm_width, intermediate_size=2 * self.llm_width,
                    num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4, vocab_size=32064)

    def clip_config(self) -> CLIPConfig:
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                    max_position_embeddings=77, vocab_size=49408, projection_dim=self.joint_width)
        return CLIPConfig(text_config=text, vision_config=self.vision(), projection_dim=self.joint_width)

    def llava_config(self) -> LlavaConfig:
        return LlavaConfig(vision_config=self.vision(), text_config=self.text(), image_token_id=32000,
                           projector_hidden_act="gelu", vision_feature_layer=self.feature_layer,
                           vision_feature_select_strategy="default")

    def next_config(self, rows: int, cols: int) -> LlavaNextConfig:
        size = self.image_size
        return LlavaNextConfig(vision_config=self.vision(), text_config=self.text(), image_token_id=32000,
                               projector_hidden_act="gelu", vision_feature_layer=self.feature_layer,
                               vision_feature_select_strategy="default",
                               image_grid_pinpoints=[[rows * size, cols * size]])


def draw_shape(index: int) -> TowerShape:
    rng = random.Random(SWEEP_SEED * 1000 + index)
    layers = rng.randint(3, 6)
    return TowerShape(
        index=index, patch=rng.choice([14, 16]), side=rng.randint(7, 20), heads=rng.choice([2, 3, 4, 6, 8]),
        head_dim=rng.choice([4, 8, 12, 16]), layers=layers, feature_layer=rng.choice([-2, -3]),
        llm_width=8 * rng.randint(3, 20), joint_width=rng.choice([8, 16, 24]), peaked=index % 2 == 1,
    )


def peak(tower: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, parameter in tower.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                parameter.mul_(PEAKED_QK_SCALE)


@cache
def stack_of(shape: TowerShape, grid: tuple[int, int] | None = None) -> VisionStack:
    """Tower, projector and CLIP text side of `shape`, seeded random (HF's initialisation)."""
    model, config = (LLAVA15, shape.llava_config()) if grid is None else (NEXT, shape.next_config(*grid))
    options = {} if grid is None else {"grid": f"{grid[0]}x{grid[1]}"}
    torch.manual_seed(SWEEP_SEED + shape.index)
    tower, projector = model.build_vision(config)
    if shape.peaked:
        peak(tower)
    clip_config = shape.clip_config()
    text = CLIPTextModelWithProjection(clip_config.text_config).eval()
    visual_projection = torch.nn.Linear(clip_config.vision_config.hidden_size, shape.joint_width, bias=False).eval()
    clip = ClipText(clip_config, text, visual_projection, RandomWeights(shape.index))
    return VisionStack(config, model.geometry(config, options), tower, projector, RandomWeights(shape.index), clip)


@dataclass
class OfficialSignals:
    """What the official code reads, from HF's modules: one row per crop."""

    hidden: Tensor  # (B, 1+N, C) hidden_states[feature layer]
    cls_attention: Tensor  # (B, H, 1+N) attentions[feature layer][:, :, 0]
    keys: Tensor  # (B, H, 1+N, d) the feature layer's k_proj output
    next_q: Tensor  # (B, 1+N, C) the next layer's q_proj / k_proj on its layer_norm1
    next_k: Tensor
    clip_patch_embeds: Tensor  # (B, N, P) visual_projection(post_layernorm(patches))
    text_embeds: Tensor  # (B, P)

    @property
    def patches(self) -> Tensor:
        return self.hidden[:, 1:]

    def attention(self) -> Tensor:
        return self.cls_attention[:, :, 1:].mean(dim=1)


def sample_inputs(stack: VisionStack, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """One image (all its crops) and one question's CLIP text embedding (None without a CLIP text side)."""
    pixel_values = random_pixel_values(stack.geometry, 1, seed)
    if stack.clip is None:
        return pixel_values, None
    ids = torch.from_numpy(random_input_ids(1, stack.clip.max_length, stack.clip.vocab_size, seed))
    with torch.no_grad():
        text_embeds = stack.clip.text(ids).text_embeds
    return pixel_values, text_embeds.numpy()


def official_signals(stack: VisionStack, pixel_values: np.ndarray, text_embeds: np.ndarray) -> OfficialSignals:
    g: Geometry = stack.geometry
    crops = torch.from_numpy(pixel_values).reshape(-1, 3, g.image_height, g.image_width)
    tower = stack.tower
    layer = g.feature_layer
    tower.set_attn_implementation("eager")  # SDPA returns no attention maps
    try:
        with torch.no_grad():
            out = tower(pixel_values=crops, output_hidden_states=True, output_attentions=True)
    finally:
        tower.set_attn_implementation("sdpa")
    with torch.no_grad():
        hidden, before = out.hidden_states[layer + 1], out.hidden_states[layer]
        feature = tower.encoder.layers[layer]
        batch, length, width = hidden.shape
        keys = feature.self_attn.k_proj(feature.layer_norm1(before))
        keys = keys.view(batch, length, g.num_heads, g.head_dim).transpose(1, 2)
        following = tower.encoder.layers[layer + 1]
        h = following.layer_norm1(hidden)
        clip_patch_embeds = stack.clip.visual_projection(tower.post_layernorm(hidden[:, 1:]))
    return OfficialSignals(hidden, out.attentions[layer][:, :, 0], keys, following.self_attn.q_proj(h),
                           following.self_attn.k_proj(h), clip_patch_embeds,
                           torch.from_numpy(text_embeds).expand(batch, -1))


def drawn_keeps(limit: int, minimum: int, num_patches: int, seed: int) -> list[int]:
    """A small keep, about a third of N, and one near the method's limit (N - 1, or the kernel's rank)."""
    rng = random.Random(seed)
    small = rng.randint(minimum, max(minimum, 8))
    third = max(minimum, num_patches // 3 + rng.randint(-3, 3))
    near = max(minimum, limit - rng.randint(0, 3))
    return sorted({min(k, limit) for k in (small, third, near)})


QWEN = MODELS.get("qwen2.5-vl")


@dataclass(frozen=True)
class QwenShape:
    index: int
    depth: int
    heads: int
    head_dim: int
    full_blocks: tuple[int, ...]  # always the last: the scoring block is a full-attention one, as in Qwen2.5-VL
    llm_width: int
    units: tuple[int, int]  # image size in 28-px merge units (rows, cols)
    peaked: bool

    @property
    def image_size(self) -> str:
        return f"{28 * self.units[0]}x{28 * self.units[1]}"

    def __str__(self) -> str:
        return (f"{self.image_size}-w{self.heads * self.head_dim}h{self.heads}-L{self.depth}"
                f"full{''.join(map(str, self.full_blocks))}-D{self.llm_width}-{'peaked' if self.peaked else 'flat'}")

    def config(self):
        from transformers import Qwen2_5_VLConfig

        from vtp_export.models.qwen2_5_vl import tiny_text, tiny_vision

        width = self.heads * self.head_dim
        vision = tiny_vision() | dict(depth=self.depth, hidden_size=width, num_heads=self.heads,
                                      intermediate_size=2 * width, out_hidden_size=self.llm_width,
                                      fullatt_block_indexes=list(self.full_blocks))
        heads = self.llm_width // 16  # head width 16: tiny_text's mrope_section
        text = tiny_text() | dict(hidden_size=self.llm_width, num_attention_heads=heads, num_key_value_heads=heads)
        return Qwen2_5_VLConfig(vision_config=vision, text_config=text, image_token_id=151655,
                                video_token_id=151656, vision_start_token_id=151652)


def draw_qwen_shape(index: int) -> QwenShape:
    rng = random.Random(SWEEP_SEED * 1000 + 500 + index)
    depth = rng.randint(2, 4)
    full = tuple(sorted({depth - 1} | {b for b in range(depth - 1) if rng.random() < 0.3}))
    return QwenShape(index=index, depth=depth, heads=rng.choice([2, 4]), head_dim=rng.choice([8, 16]),
                     full_blocks=full, llm_width=16 * rng.randint(2, 8),
                     units=(rng.randint(2, 9), rng.randint(2, 9)), peaked=index % 2 == 1)


@cache
def qwen_stack_and_reference(shape: QwenShape):
    """Our stack (tower without merger, PatchMerger) and HF's whole vision tower with the same weights."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    config = shape.config()
    torch.manual_seed(SWEEP_SEED + shape.index)
    visual = Qwen2_5_VisionTransformerPretrainedModel(config.vision_config).float().eval()
    with torch.no_grad():  # wider than HF's init, so that attention is not near-uniform (tests/conftest.py)
        for name, parameter in visual.named_parameters():
            if parameter.dim() == 1 and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * torch.randn_like(parameter))
            else:
                parameter.normal_(0, 0.1 if shape.peaked else 0.05)
    torch.manual_seed(0)
    tower, projector = QWEN.build_vision(config)
    tower.load_state_dict({k: v for k, v in visual.state_dict().items() if not k.startswith("merger.")})
    projector.ln_q.load_state_dict(visual.merger.ln_q.state_dict())
    projector.mlp.load_state_dict(visual.merger.mlp.state_dict())
    geometry = QWEN.geometry(config, {"image_size": shape.image_size})
    return VisionStack(config, geometry, tower, projector, RandomWeights(shape.index)), visual
