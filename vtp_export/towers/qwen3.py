"""The Qwen3-VL vision tower as a static-shape graph for one image size fixed at export.

pixel_values (B, 3, H, W), rescaled and normalised as Qwen's processor does -> VisionFeatures of the M merged
tokens (M = H/32 x W/32, raster order): the merger's input (the four patch features of each 2x2 unit,
concatenated), the DeepStack levels (the same layout after each block of deepstack_visual_indexes) and the
attention each merged token receives in the last block.

Reference: transformers' Qwen3VLVisionModel.forward (models/qwen3_vl/modeling_qwen3_vl.py, with
vision_utils.get_vision_interpolation_indices_and_weights and get_vision_position_ids). How its dynamic pieces
become static:
* Patchify: the processor duplicates the still frame along T and flattens (C, T, 16, 16) patches in merge-unit
  order; here the frame is stacked twice, HF's Conv3d (kernel = stride = (T, 16, 16)) runs over the whole image
  and a reshape/transpose puts the patches in HF's order: 2x2 units in raster order, patches row-major inside a
  unit. Every block works in that order, so the four patches of a merged token are consecutive and merged
  tokens come out in raster order with no gather (Qwen2.5-VL's tower reorders from window order; Qwen3-VL has no
  windows).
* Learned positions: HF resamples its 48x48 table to the image's patch grid on every call (bilinear,
  align_corners: 2x2 taps per patch, summed in HF's tap order); here that sum is computed once at build time
  from the loaded table (position_table) and is a constant of the graph.
* 2-D RoPE: cos/sin of every patch are constants from its (row, col), HF's [h, w, h, w] layout.
* Attention: one image per batch row, so every block is full attention over the image's patches (HF's
  cu_seqlens split is one chunk per image). A video (--frames) comes in as temporal patches of two frames, one
  per batch row (models/layout.py TemporalGroups): HF's cu_seqlens has one chunk per temporal patch, and its
  position table and RoPE repeat per grid_t, so each is one image here.
* Mergers: the main merger (LayerNorm per patch) is the projector; the DeepStack mergers (LayerNorm over the
  whole unit) project the levels (models/qwen3_vl.py level_projectors, export/graph.py LevelProjection).

Scores: the last block's softmax attention in float32 (module `scores`, kept float32 in fp16/bf16 graphs), mean
over heads and queries, averaged over each 2x2 unit (towers/qwen.py ReceivedAttention): HoloV's official Qwen
form on a tower whose last block attends globally.
"""

import torch
from torch import Tensor, nn

from vtp_export.contract import MethodRequirements, Signal, VisionFeatures, VisionStack
from vtp_export.towers.qwen import ReceivedAttention, StaticBlock, temporal_patch


def unit_order(rows: int, cols: int, merge: int) -> list[int]:
    """Raster patch index of each position of HF's sequence: merge x merge units in raster order, patches
    row-major inside a unit (get_vision_position_ids)."""
    return [(r * merge + y) * cols + c * merge + x
            for r in range(rows // merge) for c in range(cols // merge) for y in range(merge) for x in range(merge)]


def axis_taps(size: int, side: int) -> tuple[Tensor, Tensor]:
    """(size, 2) taps into the table's `side` rows of each of an axis' `size` patches, and their bilinear weights:
    align_corners (position i at i * (side - 1) / (size - 1)), float32 as HF computes them."""
    source = torch.arange(size, dtype=torch.float32) * (side - 1) / max(size - 1, 1)
    floor = source.floor()
    offsets = torch.arange(2)
    taps = (floor.long()[:, None] + offsets).clamp(max=side - 1)
    return taps, (1 - (source[:, None] - floor[:, None] - offsets).abs()).clamp(min=0)


def position_table(table: Tensor, rows: int, cols: int) -> Tensor:
    """The learned (side * side, C) position table resampled to a rows x cols patch grid, (rows * cols, C) in
    raster order: HF's four taps per patch (h floor/ceil x w floor/ceil) weighted and summed in its order."""
    side = int(table.shape[0] ** 0.5)
    (h_taps, h_weights), (w_taps, w_weights) = axis_taps(rows, side), axis_taps(cols, side)
    index = (h_taps[:, None, :, None] * side + w_taps[None, :, None, :]).reshape(rows * cols, 4)
    weight = (h_weights[:, None, :, None] * w_weights[None, :, None, :]).reshape(rows * cols, 4)
    return (table.detach().float()[index] * weight[:, :, None]).sum(1)


class Qwen3Features(nn.Module):
    """pixel_values (B, 3, H, W) -> VisionFeatures of the merged tokens with their DeepStack levels (and the
    received attention where the method scores by it)."""

    def __init__(self, stack: VisionStack, method: MethodRequirements) -> None:
        super().__init__()
        tower, vision, geometry = stack.tower, stack.config.vision_config, stack.geometry
        self.merge = vision.spatial_merge_size
        self.unit = self.merge * self.merge
        self.rows, self.cols = geometry.grid_rows * self.merge, geometry.grid_cols * self.merge  # patches
        self.patch_embed = tower.patch_embed.proj  # Conv3d, kernel = stride = (T, 16, 16)
        self.temporal = vision.temporal_patch_size
        self.blocks = nn.ModuleList(StaticBlock(block, 1) for block in tower.blocks)
        self.level_blocks = tuple(vision.deepstack_visual_indexes)
        if Signal.PATCH_SCORES in method.requires:
            self.scores = ReceivedAttention(range(self.rows * self.cols), self.unit, None)

        order = torch.tensor(unit_order(self.rows, self.cols, self.merge))
        positions = position_table(tower.pos_embed.weight, self.rows, self.cols)[order]
        self.register_buffer("position_embeds", positions.unsqueeze(0), persistent=False)
        rows, cols = (order // self.cols).float(), (order % self.cols).float()
        inv_freq = tower.rotary_pos_emb.inv_freq.float()
        angles = torch.cat([rows[:, None] * inv_freq, cols[:, None] * inv_freq], dim=-1)
        angles = torch.cat([angles, angles], dim=-1)  # (N, head_dim): HF's axial layout [h, w, h, w]
        self.register_buffer("cos", angles.cos()[None, :, None, :], persistent=False)
        self.register_buffer("sin", angles.sin()[None, :, None, :], persistent=False)

    def forward(self, pixel_values: Tensor, text_embeds: Tensor | None = None) -> VisionFeatures:
        return self.method_inputs(self.tower_features(pixel_values), text_embeds)

    def embed(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, N, C) in HF's unit order, learned positions added: the still frame duplicated along
        T as HF's processor does; or (B, 3, T, H, W), one temporal patch of a video."""
        batch, m = pixel_values.shape[0], self.merge
        frames = temporal_patch(pixel_values, self.temporal)
        patches = self.patch_embed(frames).reshape(batch, -1, self.rows // m, m, self.cols // m, m)
        units = patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, self.rows * self.cols, -1)
        return units + self.position_embeds

    def units(self, x: Tensor) -> Tensor:
        """(B, N, C) in unit order -> (B, M, unit * C): the merged tokens, raster order."""
        batch, length, width = x.shape
        return x.reshape(batch, length // self.unit, width * self.unit)

    def run_blocks(self, pixel_values: Tensor) -> tuple[Tensor, list[Tensor]]:
        """The patches entering the last block, and the levels taken before it."""
        x, levels = self.embed(pixel_values), []
        for i, block in enumerate(self.blocks[:-1]):
            x, _ = block(x, self.cos, self.sin, None)
            if i in self.level_blocks:
                levels.append(self.units(x))
        return x, levels

    def last_block(self, x: Tensor, levels: list[Tensor]) -> VisionFeatures:
        x, received = self.blocks[-1](x, self.cos, self.sin, None, getattr(self, "scores", None))
        if len(self.blocks) - 1 in self.level_blocks:
            levels = [*levels, self.units(x)]
        return VisionFeatures(hidden=self.units(x), received_attention=received, cls_token=False,
                              levels=tuple(levels))

    def tower_features(self, pixel_values: Tensor) -> VisionFeatures:
        return self.last_block(*self.run_blocks(pixel_values))

    def scoring_input(self, pixel_values: Tensor) -> Tensor:
        """The patches entering the last block, which the scores are read from, after the levels taken before it
        (one tensor: (B, (levels + 1) * N, C))."""
        x, levels = self.run_blocks(pixel_values)
        batch, length, width = x.shape
        return torch.cat([*(level.reshape(batch, length, width) for level in levels), x], dim=1)

    def scoring_layer(self, x: Tensor) -> VisionFeatures:
        length = self.rows * self.cols
        *levels, x = x.split(length, dim=1)
        return self.last_block(x, [self.units(level) for level in levels])

    def method_inputs(self, features: VisionFeatures, text_embeds: Tensor | None) -> VisionFeatures:
        """Nothing beyond the last block: the merged tokens, their levels, scores and (Signal.PROMPT_EMBEDS) the
        prompt's mean LLM input embedding, passed through, are all Qwen's methods use."""
        features.text_embeds = text_embeds
        return features


class PatchMerger(nn.Module):
    """HF's Qwen3VLVisionPatchMerger on merged tokens: (B, K, unit * C) -> (B, K, D_llm). The main merger
    normalises each of the unit's patch features (HF on its (N, C) rows), a DeepStack merger the unit's whole
    feature (use_postshuffle_norm); then fc1, GELU, fc2. Its parameters keep HF's names."""

    def __init__(self, merger: nn.Module, unit: int) -> None:
        super().__init__()
        self.norm = merger.norm
        self.linear_fc1 = merger.linear_fc1
        self.act_fn = merger.act_fn
        self.linear_fc2 = merger.linear_fc2
        self.postshuffle = merger.use_postshuffle_norm
        self.unit = unit

    def forward(self, units: Tensor) -> Tensor:
        if self.postshuffle:
            x = self.norm(units)
        else:
            batch, tokens, width = units.shape
            x = self.norm(units.reshape(batch, tokens, self.unit, width // self.unit)).reshape(batch, tokens, width)
        return self.linear_fc2(self.act_fn(self.linear_fc1(x)))
