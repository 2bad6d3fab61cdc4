"""The exported vision graph: CLIP tower up to LLaVA's feature layer, a pruning method, the projector.

Layers before the feature layer run as HF defines them (fused SDPA attention). The feature layer is
re-stated here so that the one attention row the methods need, the CLS query against all keys, is
computed from the same q/k projections in float32 without materialising any full attention map.
Layers after the feature layer are not part of the graph.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from vtp_export.methods.base import PruningMethod, VisionFeatures
from vtp_export.models import VisionStack


def run_feature_layer(layer: CLIPEncoderLayer, x: Tensor, with_attention: bool) -> VisionFeatures:
    attention = layer.self_attn
    batch, length, width = x.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    h = layer.layer_norm1(x)
    q, k, v = (proj(h).view(batch, length, heads, head_dim).transpose(1, 2)
               for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
    mixed = F.scaled_dot_product_attention(q, k, v, scale=attention.scale)
    x = x + attention.out_proj(mixed.transpose(1, 2).reshape(batch, length, width))
    x = x + layer.mlp(layer.layer_norm2(x))
    if not with_attention:
        return VisionFeatures(hidden=x, cls_attention=None, keys=None)
    cls_logits = (q[:, :, :1].float() @ k.float().transpose(-1, -2)) * attention.scale
    return VisionFeatures(hidden=x, cls_attention=torch.softmax(cls_logits, dim=-1).squeeze(2), keys=k)


class PrunedVisionEncoder(nn.Module):
    """pixel_values (B, 3, H, W) -> image_embeds (B, K, D_llm), token_index (B, K)."""

    def __init__(self, stack: VisionStack, method: PruningMethod) -> None:
        super().__init__()
        tower = stack.tower
        feature_layer = stack.geometry.feature_layer
        self.embeddings = tower.embeddings
        self.pre_layrnorm = tower.pre_layrnorm
        self.layers = nn.ModuleList(tower.encoder.layers[:feature_layer])
        self.feature_layer = tower.encoder.layers[feature_layer]
        self.projector = stack.projector
        self.method = method
        self.eval()

    def features(self, pixel_values: Tensor) -> VisionFeatures:
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        for layer in self.layers:
            x = layer(x, None)
        return run_feature_layer(self.feature_layer, x, self.method.uses_attention)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        return self.method(self.features(pixel_values), self.projector)
