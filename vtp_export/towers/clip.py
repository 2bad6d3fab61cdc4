"""The CLIP tower as the vision graph needs it: LLaVA's feature layer with the signals methods score by, the
next layer's scores (PruMerge), CLIP's joint space and text tower (text-conditioned methods).

The feature layer is re-stated so that the one attention row the methods need, the CLS query against all
keys, is computed from the same q/k projections in float32 without materialising any full attention map;
layers before it run as HF defines them (fused SDPA attention), layers after it are not in the graph
except the next layer's q/k projections where a method scores by them.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPTextModelWithProjection

from vtp_export.contract import ClipText, MethodRequirements, Signal, VisionFeatures, VisionStack, WeightsSource
from vtp_export.errors import ExportError


def build_clip_text(clip: CLIPConfig, source: WeightsSource) -> ClipText:
    text = CLIPTextModelWithProjection(clip.text_config).float().eval()
    projection = nn.Linear(clip.vision_config.hidden_size, clip.projection_dim, bias=False).float().eval()
    return ClipText(clip, text, projection, source)


class ClsAttentionRow(nn.Module):
    """softmax(q_cls . K^T * scale) per head in float32: the one attention row methods score by. A module of
    its own so that its nodes carry a `scores` namespace, which reduced-precision graphs keep float32
    (precision.float32_nodes)."""

    def forward(self, q: Tensor, k: Tensor, scale: float) -> Tensor:
        logits = (q[:, :, :1].float() @ k.float().transpose(-1, -2)) * scale
        return torch.softmax(logits, dim=-1).squeeze(2)


class FullWidthClsRow(nn.Module):
    """softmax(q_cls . K^T * scale) in float32 with q_cls (B, 1, C) and K (B, 1+N, C) as one full-width head
    (PruMerge's scores); a `scores` module like ClsAttentionRow."""

    def forward(self, q_cls: Tensor, keys: Tensor, scale: float) -> Tensor:
        logits = (q_cls.float() @ keys.float().transpose(-1, -2)) * scale
        return torch.softmax(logits, dim=-1).squeeze(1)


def run_feature_layer(layer: nn.Module, x: Tensor, scores: nn.Module | None) -> VisionFeatures:
    attention = layer.self_attn
    batch, length, width = x.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    h = layer.layer_norm1(x)
    q, k, v = (proj(h).view(batch, length, heads, head_dim).transpose(1, 2)
               for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
    mixed = F.scaled_dot_product_attention(q, k, v, scale=attention.scale)
    x = x + attention.out_proj(mixed.transpose(1, 2).reshape(batch, length, width))
    x = x + layer.mlp(layer.layer_norm2(x))
    if scores is None:
        return VisionFeatures(hidden=x)
    return VisionFeatures(hidden=x, cls_attention=scores(q, k, attention.scale), keys=k)


def full_width_cls_attention(layer: nn.Module, hidden: Tensor, scores: nn.Module) -> tuple[Tensor, Tensor]:
    """The CLS row of `layer`'s q/k taken as one head of the full width: ((B, 1+N) float32, keys (B, 1+N, C))."""
    h = layer.layer_norm1(hidden)
    q_cls = layer.self_attn.q_proj(h[:, :1])
    keys = layer.self_attn.k_proj(h)
    return scores(q_cls, keys, hidden.shape[-1] ** -0.5), keys


class ClipFeatures(nn.Module):
    """pixel_values (B', 3, S, S) [, text_embeds (B', P)] -> VisionFeatures of the feature layer, with only
    the signals `method` requires."""

    def __init__(self, stack: VisionStack, method: MethodRequirements) -> None:
        super().__init__()
        tower, layer = stack.tower, stack.geometry.feature_layer
        self.embeddings = tower.embeddings
        self.pre_layrnorm = tower.pre_layrnorm
        self.layers = nn.ModuleList(tower.encoder.layers[:layer])
        self.feature_layer = tower.encoder.layers[layer]
        if method.requires & {Signal.CLS_ATTENTION, Signal.KEYS, Signal.PATCH_SCORES}:
            self.scores = ClsAttentionRow()
        if Signal.NEXT_LAYER in method.requires:
            if layer + 1 >= len(tower.encoder.layers):
                raise ExportError(f"method {method.name} scores with the layer after the feature layer; "
                                  "this checkpoint's feature layer is its last")
            self.next_layer = tower.encoder.layers[layer + 1]
            self.next_scores = FullWidthClsRow()
        if Signal.CLIP_TEXT in method.requires:
            if stack.clip is None:
                raise ExportError(f"method {method.name} is text-conditioned but no CLIP text side was loaded")
            self.post_layernorm = tower.post_layernorm
            self.visual_projection = stack.clip.visual_projection

    def forward(self, pixel_values: Tensor, text_embeds: Tensor | None = None) -> VisionFeatures:
        return self.method_inputs(self.tower_features(pixel_values), text_embeds)

    def tower_features(self, pixel_values: Tensor) -> VisionFeatures:
        """The tower up to and with the feature layer (and its CLS attention row where the method needs it)."""
        return self.scoring_layer(self.scoring_input(pixel_values))

    def scoring_input(self, pixel_values: Tensor) -> Tensor:
        """The hidden states entering the feature layer."""
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        for encoder_layer in self.layers:
            x = encoder_layer(x, None)
        return x

    def scoring_layer(self, x: Tensor) -> VisionFeatures:
        return run_feature_layer(self.feature_layer, x, getattr(self, "scores", None))

    def method_inputs(self, features: VisionFeatures, text_embeds: Tensor | None) -> VisionFeatures:
        """What the method needs beyond the feature layer: the next layer's scores, CLIP's joint space."""
        if hasattr(self, "next_layer"):
            features.next_cls_attention, features.next_keys = full_width_cls_attention(self.next_layer, features.hidden,
                                                                                       self.next_scores)
        if hasattr(self, "visual_projection"):
            features.clip_patch_embeds = self.visual_projection(self.post_layernorm(features.patches))
            features.text_embeds = text_embeds
        return features


class ClipTextEncoder(nn.Module):
    """input_ids (B, L) int64 -> text_embeds (B, P): CLIP's text tower and projection, pooled at the EOS.

    The text tower is causal, so ids after the EOS (padding up to L) cannot change the pooled embedding.
    Pooling is re-stated as a Gather: HF indexes with arange(batch), a shape-valued op that keeps a
    dynamic-batch graph from being statically checked.
    """

    def __init__(self, clip: ClipText) -> None:
        super().__init__()
        self.text_model = clip.text.text_model
        self.text_projection = clip.text.text_projection
        self.eos_token_id = clip.config.text_config.eos_token_id

    def forward(self, input_ids: Tensor) -> Tensor:
        hidden = self.text_model(input_ids=input_ids).last_hidden_state
        if self.eos_token_id == 2:  # configs from before transformers PR #24773: EOS is the largest id
            eos = input_ids.to(torch.int32).argmax(dim=-1)
        else:  # the first EOS (padding may repeat it)
            eos = (input_ids == self.eos_token_id).to(torch.int32).argmax(dim=-1)
        pooled = hidden.gather(1, eos.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])).squeeze(1)
        return self.text_projection(pooled)
