"""The Qwen2.5-VL vision tower as a static-shape graph for one image size fixed at export.

pixel_values (B, 3, H, W), rescaled and normalised as Qwen's processor does -> VisionFeatures of the M merged
tokens (the unit the LLM receives, M = H/28 x W/28, raster order): the merger's input (the four patch features
of each 2x2 unit, concatenated) and the attention each merged token receives in the last block.

How HF's dynamic pieces become static (HF: transformers Qwen2_5_VisionTransformerPretrainedModel.forward):
* Patchify: the processor duplicates the still frame along T and flattens (C, T, 14, 14) patches; here the
  frame is stacked twice and HF's Conv3d (kernel = stride = (T, 14, 14)) runs over the whole image. A video
  (--frames) comes in as temporal patches of two frames each (models/layout.py TemporalGroups), one per batch
  row: HF attends within each temporal patch (cu_seqlens and windows per grid_t), so each is one image here.
* Window attention: HF permutes the patches into window order (windows of 4x4 merge units, row-major; units
  row-major inside a window; 2x2 patches inside a unit) and attends within each window. Here the tower works
  in a fixed slot order: every window has exactly 64 slots, with pad slots where a window sticks out of the
  image, so a window block is a reshape to (B, windows, 64, ...) and one batched attention; full-attention
  blocks are the same code with one group of all slots. Pad keys get an additive -1e4 mask and pad queries
  are ignored, which is HF's semantics (partial windows attend among their real tokens). When H/28 and W/28
  are multiples of 4 there are no pad slots and no masks.
* 2-D RoPE: cos/sin of every slot are constants from its patch's (row, col).
* Merger: the four slots of a unit are consecutive; units go back to raster order with one constant Gather
  (HF: `merged[argsort(window_index)]`). The merger itself is the projector (PatchMerger).

Scores: the last block's softmax attention in float32 (module `scores`, kept float32 in fp16/bf16 graphs),
mean over heads, mean over the N real queries (the attention each patch receives; zero outside its window if
the last block is windowed), averaged over each 2x2 unit: HoloV's official Qwen form (methods/holov.py).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vtp_export.contract import MethodRequirements, Signal, VisionFeatures, VisionStack

MASK_VALUE = -1e4  # additive mask of pad keys: exp underflows to exactly 0 in float32, finite in fp16


@dataclass(frozen=True)
class WindowLayout:
    """Static index tables of one image size: the tower's slot order and where each slot comes from."""

    patch_rows: int
    patch_cols: int
    merge: int  # patches per side of a merge unit
    window: int  # merge units per side of an attention window
    slot_patch: tuple[int, ...]  # raster patch index of each slot, -1 for a pad slot
    unit_of_token: tuple[int, ...]  # unit (group of merge**2 consecutive slots) of each merged token, raster order

    @property
    def unit(self) -> int:
        return self.merge * self.merge

    @property
    def slots(self) -> int:
        return len(self.slot_patch)

    @property
    def slots_per_window(self) -> int:
        return self.window * self.window * self.unit

    @property
    def windows(self) -> int:
        return self.slots // self.slots_per_window

    @property
    def has_pad(self) -> bool:
        return self.slots != self.patch_rows * self.patch_cols

    @property
    def window_index(self) -> list[int]:
        """HF's get_vision_window_index for this image: the merged tokens in window order."""
        return sorted(range(len(self.unit_of_token)), key=self.unit_of_token.__getitem__)


def window_layout(height: int, width: int, patch: int, merge: int, window_px: int) -> WindowLayout:
    """Slots: windows row-major, merge units row-major inside a window, patches row-major inside a unit."""
    patch_rows, patch_cols = height // patch, width // patch
    rows, cols = patch_rows // merge, patch_cols // merge
    window = window_px // merge // patch
    slot_patch: list[int] = []
    unit_of_token = {}
    for window_row in range(math.ceil(rows / window)):
        for window_col in range(math.ceil(cols / window)):
            for r in range(window_row * window, (window_row + 1) * window):
                for c in range(window_col * window, (window_col + 1) * window):
                    inside = r < rows and c < cols
                    if inside:
                        unit_of_token[r * cols + c] = len(slot_patch) // (merge * merge)
                    slot_patch += [(r * merge + y) * patch_cols + c * merge + x if inside else -1
                                   for y in range(merge) for x in range(merge)]
    return WindowLayout(patch_rows, patch_cols, merge, window, tuple(slot_patch),
                        tuple(unit_of_token[t] for t in range(rows * cols)))


def temporal_patch(pixel_values: Tensor, temporal: int) -> Tensor:
    """The Conv3d's input (B, 3, T, H, W): a still image (B, 3, H, W) stacked T times along T, as HF's processor
    repeats it; a video's temporal patch (B, 3, T, H, W) as it is."""
    if pixel_values.dim() == 5:
        return pixel_values
    return pixel_values.unsqueeze(2).expand(-1, -1, temporal, -1, -1)


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class ReceivedAttention(nn.Module):
    """softmax(q k^T * scale + mask) in float32, and from it the attention each merged token receives: mean over
    heads, sum over real queries / N, mean over the unit's patches, raster order. A module of its own so that
    its nodes carry a `scores` namespace, which reduced-precision graphs keep float32."""

    def __init__(self, slot_patch: Sequence[int], unit: int, unit_of_token: Sequence[int] | None) -> None:
        """slot_patch: the patch of each slot, -1 for pad slots; unit_of_token: the unit of each merged token in
        raster order, None where the units are in raster order already (Qwen3-VL)."""
        super().__init__()
        valid = torch.tensor(slot_patch) >= 0
        real = int(valid.sum())
        self.unit = unit
        self.register_buffer("query_weight", valid.to(torch.float32) / real, persistent=False)
        self.register_buffer("unit_of_token", None if unit_of_token is None else torch.tensor(unit_of_token),
                             persistent=False)

    def forward(self, q: Tensor, k: Tensor, scale: float, key_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """q, k (B, G, heads, S, d) -> probabilities (B, G, heads, S, S) float32, received (B, M) float32."""
        logits = q.float() @ k.float().transpose(-1, -2) * scale
        if key_mask is not None:
            logits = logits + key_mask
        probs = torch.softmax(logits, dim=-1)
        batch, groups, _, length, _ = probs.shape
        weights = self.query_weight.reshape(1, groups, length, 1)
        received = (probs.mean(dim=2) * weights).sum(dim=2).reshape(batch, groups * length)  # per key slot
        per_unit = received.reshape(batch, -1, self.unit).mean(dim=-1)
        return probs, per_unit if self.unit_of_token is None else per_unit.index_select(1, self.unit_of_token)


class StaticBlock(nn.Module):
    """One HF vision block (its own modules) over the slot sequence, attending within `groups` equal groups."""

    def __init__(self, block: nn.Module, groups: int) -> None:
        super().__init__()
        self.block = block
        self.groups = groups
        self.heads = block.attn.num_heads
        self.scale = block.attn.head_dim ** -0.5

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, key_mask: Tensor | None,
                scores: ReceivedAttention | None = None) -> tuple[Tensor, Tensor | None]:
        batch, length, width = x.shape
        attention = self.block.attn
        qkv = attention.qkv(self.block.norm1(x)).reshape(batch, length, 3, self.heads, -1)
        q, k, v = qkv.unbind(2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin

        def grouped(t: Tensor) -> Tensor:  # (B, L, heads, d) -> (B, G, heads, S, d)
            return t.reshape(batch, self.groups, length // self.groups, self.heads, -1).transpose(2, 3)

        q, k, v = grouped(q), grouped(k), grouped(v)
        received = None
        if scores is None:
            logits = q @ k.transpose(-1, -2) * self.scale
            probs = torch.softmax(logits if key_mask is None else logits + key_mask, dim=-1)
        else:
            probs, received = scores(q, k, self.scale, key_mask)
        mixed = (probs.to(v.dtype) @ v).transpose(2, 3).reshape(batch, length, width)
        x = x + attention.proj(mixed)
        return x + self.block.mlp(self.block.norm2(x)), received


class PatchMerger(nn.Module):
    """HF's Qwen2_5_VLPatchMerger on merged tokens: (B, K, unit * C) -> (B, K, D_llm). Applies ln_q to each of
    the unit's patch features, then the MLP, as HF does on its (N, C) rows; the projector of Qwen exports."""

    def __init__(self, merger: nn.Module, unit: int) -> None:
        super().__init__()
        self.ln_q = merger.ln_q
        self.mlp = merger.mlp
        self.unit = unit

    def forward(self, units: Tensor) -> Tensor:
        batch, tokens, width = units.shape
        patches = units.reshape(batch, tokens, self.unit, width // self.unit)
        return self.mlp(self.ln_q(patches).reshape(batch, tokens, width))


class QwenFeatures(nn.Module):
    """pixel_values (B, 3, H, W) -> VisionFeatures of the merged tokens (with their received attention where the
    method scores by it)."""

    def __init__(self, stack: VisionStack, method: MethodRequirements) -> None:
        super().__init__()
        tower, vision, geometry = stack.tower, stack.config.vision_config, stack.geometry
        layout = window_layout(geometry.image_height, geometry.image_width, vision.patch_size,
                               vision.spatial_merge_size, vision.window_size)
        self.layout = layout
        self.patch_embed = tower.patch_embed.proj  # Conv3d, kernel = stride = (T, 14, 14)
        self.temporal = vision.temporal_patch_size
        full = set(vision.fullatt_block_indexes)
        self.blocks = nn.ModuleList(StaticBlock(block, 1 if i in full else layout.windows)
                                    for i, block in enumerate(tower.blocks))
        if Signal.PATCH_SCORES in method.requires:
            self.scores = ReceivedAttention(layout.slot_patch, layout.unit, layout.unit_of_token)

        slot_patch = torch.tensor(layout.slot_patch)
        valid = slot_patch >= 0
        self.register_buffer("slot_source", slot_patch.clamp(min=0), persistent=False)
        self.register_buffer("slot_valid", valid.to(torch.float32).reshape(1, -1, 1), persistent=False)
        self.register_buffer("unit_of_token", torch.tensor(layout.unit_of_token), persistent=False)
        source = slot_patch.clamp(min=0)
        rows, cols = (source // layout.patch_cols).float(), (source % layout.patch_cols).float()
        inv_freq = tower.rotary_pos_emb.inv_freq.float()
        angles = torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)
        angles = torch.cat([angles, angles], dim=-1)  # (slots, head_dim): HF's axial layout [h, w, h, w]
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)
        key_bias = torch.where(valid, 0.0, MASK_VALUE) if layout.has_pad else None
        self.register_buffer("window_mask", None if key_bias is None else
                             key_bias.reshape(1, layout.windows, 1, 1, layout.slots_per_window), persistent=False)
        self.register_buffer("full_mask", None if key_bias is None else key_bias.reshape(1, 1, 1, 1, layout.slots),
                             persistent=False)

    def forward(self, pixel_values: Tensor, text_embeds: Tensor | None = None) -> VisionFeatures:
        return self.method_inputs(self.tower_features(pixel_values), text_embeds)

    def key_mask(self, block: StaticBlock) -> Tensor | None:
        return self.full_mask if block.groups == 1 else self.window_mask

    def embed(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, slots, C): the still frame duplicated along T as HF's processor does; or (B, 3, T, H, W),
        one temporal patch of a video (models/layout.py TemporalGroups)."""
        batch = pixel_values.shape[0]
        frames = temporal_patch(pixel_values, self.temporal)
        patches = self.patch_embed(frames).reshape(batch, self.patch_embed.out_channels, -1)
        slots = patches.transpose(1, 2).index_select(1, self.slot_source)
        return slots * self.slot_valid if self.layout.has_pad else slots

    def tower_features(self, pixel_values: Tensor) -> VisionFeatures:
        return self.scoring_layer(self.scoring_input(pixel_values))

    def scoring_input(self, pixel_values: Tensor) -> Tensor:
        """The slots entering the last block, which the scores are read from."""
        x = self.embed(pixel_values)
        for block in self.blocks[:-1]:
            x, _ = block(x, self.cos, self.sin, self.key_mask(block))
        return x

    def scoring_layer(self, x: Tensor) -> VisionFeatures:
        last = self.blocks[-1]
        x, received = last(x, self.cos, self.sin, self.key_mask(last), getattr(self, "scores", None))
        batch, slots, width = x.shape
        units = x.reshape(batch, slots // self.layout.unit, width * self.layout.unit).index_select(1, self.unit_of_token)
        return VisionFeatures(hidden=units, received_attention=received, cls_token=False)

    def method_inputs(self, features: VisionFeatures, text_embeds: Tensor | None) -> VisionFeatures:
        """Nothing beyond the last block: the merged tokens, their scores and (Signal.PROMPT_EMBEDS) the prompt's
        mean LLM input embedding, passed through, are all Qwen's methods use."""
        features.text_embeds = text_embeds
        return features
