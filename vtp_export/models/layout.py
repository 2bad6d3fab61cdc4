"""How a model lays one image's tokens out for the LLM, as graph code: the crops of LLaVA-NeXT's AnyRes grid
(the crops through the tower as one batch, per-crop selections arranged as the official NeXT paths do), a
video's temporal groups (the Qwen models' --frames: each group one crop, laid out group after group) and the
token_index codec (models/token_index.py) that numbers each token's source.
Imported by the adapters' graph members only (it imports torch)."""

import torch
from torch import Tensor, nn

from vtp_export.contract import Geometry, Selection, VisionFeatures
from vtp_export.models.token_index import encode_token_index
from vtp_export.ops import gather_rows, smallest_indices


def anyres_sequence(geometry: Geometry) -> tuple[Tensor, Tensor]:
    """The image's one token sequence on LLaVA-NeXT, the base crop's patches then the tiles' in full-grid raster
    order: for each sequence position the flat index crop * N + patch into the crops' patches, and its
    token_index."""
    g, cols, n = geometry.grid, geometry.tile_cols, geometry.num_patches
    order, token_index = list(range(n)), [p + 1 for p in range(n)]
    for row in range(geometry.tile_rows * g):
        for col in range(cols * g):
            crop = 1 + (row // g) * cols + col // g
            patch = (row % g) * g + col % g
            order.append(crop * n + patch)
            token_index.append(encode_token_index(crop, patch + 1, n))
    return torch.tensor(order), torch.tensor(token_index)


def tile_raster_keys(geometry: Geometry) -> Tensor:
    """(tiles, 1 + N) float32: the full-grid raster index of each tile's encoder position (patches 1..N;
    position 0, CLS, has none: 0 here, never used)."""
    g, cols = geometry.grid, geometry.tile_cols
    keys = torch.zeros(geometry.crops - 1, geometry.num_patches + 1)
    for tile in range(geometry.crops - 1):
        tile_row, tile_col = divmod(tile, cols)
        for patch in range(geometry.num_patches):
            row, col = divmod(patch, g)
            keys[tile, patch + 1] = (tile_row * g + row) * (cols * g) + tile_col * g + col
    return keys


class AnyResCrops(nn.Module):
    """pixel_values (B, crops, 3, S, S) [, text_embeds (B, P)] -> the crops through `features` as one batch of
    B x crops rows (base first within each image), each crop with its image's question, and the image's token
    sequence for methods that spend one budget per image."""

    def __init__(self, features: nn.Module, geometry: Geometry) -> None:
        super().__init__()
        self.features, self.crops = features, geometry.crops
        self.register_buffer("image_sequence", self.sequence(geometry), persistent=False)

    @staticmethod
    def sequence(geometry: Geometry) -> Tensor:
        return anyres_sequence(geometry)[0]

    def forward(self, pixel_values: Tensor, text_embeds: Tensor | None = None) -> VisionFeatures:
        return self.method_inputs(self.tower_features(pixel_values), text_embeds)

    def crop_batch(self, pixel_values: Tensor) -> Tensor:
        """The crops of every image as one batch of the tower's input."""
        return pixel_values.flatten(0, 1)

    def tower_features(self, pixel_values: Tensor) -> VisionFeatures:
        return self.features.tower_features(self.crop_batch(pixel_values))

    def scoring_input(self, pixel_values: Tensor) -> Tensor:
        return self.features.scoring_input(self.crop_batch(pixel_values))

    def scoring_layer(self, x: Tensor) -> VisionFeatures:
        return self.features.scoring_layer(x)

    def method_inputs(self, features: VisionFeatures, text_embeds: Tensor | None) -> VisionFeatures:
        if text_embeds is not None:
            text_embeds = text_embeds.repeat_interleave(self.crops, dim=0)
        features = self.features.method_inputs(features, text_embeds)
        features.image_sequence = self.image_sequence
        return features


class TemporalGroups(AnyResCrops):
    """pixel_values (B, F, 3, H, W), a video of F frames [, text_embeds (B, P)] -> its F / 2 temporal groups (frames
    2g and 2g + 1) through `features` as one batch of B x groups rows of (3, 2, H, W) clips, each the tower's
    temporal patch (HF's Conv3d over 2 frames): HF's vision towers attend within each group (cu_seqlens per
    temporal patch), so each group is one crop. The video's token sequence is its groups' tokens group after group."""

    @staticmethod
    def sequence(geometry: Geometry) -> Tensor:
        return torch.arange(geometry.tokens_per_image)

    def crop_batch(self, pixel_values: Tensor) -> Tensor:
        batch, frames = pixel_values.shape[:2]
        pairs = pixel_values.reshape(batch * self.crops, frames // self.crops, *pixel_values.shape[2:])
        return pairs.transpose(1, 2)


class OneCrop(nn.Module):
    """One crop per image: the selection's slots are the image's tokens as they are."""

    def forward(self, embeds: Tensor, selection: Selection) -> tuple[Tensor, ...]:
        if selection.num_valid is None:
            return embeds, selection.token_index
        return embeds, selection.token_index, selection.num_valid

    def levels(self, levels: Tensor, selection: Selection) -> Tensor:
        """(B, L, K, D) feature levels of the selection's slots, laid out as forward() lays out the embeddings."""
        return levels


class TemporalLayout(nn.Module):
    """Per-group selections (B x groups rows of k slots) -> one sequence per video, group after group, each
    group's slots as the method emits them (raster order for every method with a spatial order), token_index
    group * (M + 1) + merged position. A selection over the video's whole sequence (Selection.per_image: evs,
    HoloV) keeps its order: sequence position p (1-based) becomes group (p - 1) // M, position (p - 1) % M + 1."""

    def __init__(self, geometry: Geometry) -> None:
        super().__init__()
        self.groups, self.tokens = geometry.crops, geometry.num_patches

    def forward(self, embeds: Tensor, selection: Selection) -> tuple[Tensor, Tensor]:
        if selection.num_valid is not None:
            raise ValueError("a data-dependent token count has no temporal layout")
        index = selection.token_index
        if selection.per_image:  # group * (M + 1) + position = p + group (no Mod: TensorRT 10.3 lacks it)
            group = torch.div(index - 1, self.tokens, rounding_mode="floor")
            return embeds, torch.where(index >= 1, index + group, index)
        batch, kept = index.shape[0] // self.groups, index.shape[1]
        group = torch.arange(self.groups, device=index.device).view(1, self.groups, 1)
        index = index.reshape(batch, self.groups, kept)
        index = torch.where(index >= 0, encode_token_index(group, index, self.tokens), index)
        return embeds.reshape(batch, self.groups * kept, embeds.shape[-1]), index.reshape(batch, self.groups * kept)

    def levels(self, levels: Tensor, selection: Selection) -> Tensor:
        """(B x groups, L, k, D) -> (B, L, groups * k, D) as forward() lays out the embeddings (per-image
        selections: (B, L, K, D) as they are)."""
        if selection.per_image:
            return levels
        rows, count, kept, width = levels.shape
        grouped = levels.reshape(rows // self.groups, self.groups, count, kept, width).transpose(1, 2)
        return grouped.reshape(rows // self.groups, count, self.groups * kept, width)


class AnyResLayout(nn.Module):
    """Per-crop selections (B x crops rows) -> one sequence per image, as the official LLaVA-NeXT paths of
    CDPruner, VisPruner and FasterVLM lay it out (methods-spec.md): the base crop's tokens as the method
    emits them, then the tiles' tokens in full-grid raster order of their source patch (tile (tr, tc),
    patch (pr, pc) at row tr*g + pr, column tc*g + pc), tokens without a single patch source (CLS, merged,
    padding) after those, group by group (Selection.slot_groups), tile by tile. A selection over the image's
    whole sequence (Selection.per_image, HoloV) keeps its order. token_index becomes
    encode_token_index(crop, encoder position)."""

    def __init__(self, geometry: Geometry) -> None:
        super().__init__()
        self.geometry = geometry
        self.register_buffer("raster_keys", tile_raster_keys(geometry), persistent=False)
        self.register_buffer("sequence_token_index", anyres_sequence(geometry)[1], persistent=False)

    def forward(self, embeds: Tensor, selection: Selection) -> tuple[Tensor, Tensor]:
        if selection.num_valid is not None:
            raise ValueError("a data-dependent token count has no multi-crop layout")
        index = selection.token_index
        if selection.per_image:  # sequence position + 1 -> the crop's encoder position
            token_index = self.sequence_token_index[(index - 1).clamp(min=0)]
            return embeds, torch.where(index >= 1, token_index, index)
        return self.arrange_crops(embeds, index, selection.slot_groups)

    def arrange_crops(self, embeds: Tensor, index: Tensor, groups: Tensor | None) -> tuple[Tensor, Tensor]:
        g = self.geometry
        crops, kept, width = g.crops, index.shape[1], embeds.shape[-1]
        tiles = crops - 1
        embeds = embeds.reshape(-1, crops, kept, width)
        index = index.reshape(-1, crops, kept)
        batch = index.shape[0]
        tile_index = index[:, 1:]  # (B, T, k)
        raster = self.raster_keys.unsqueeze(0).expand(batch, -1, -1).gather(2, tile_index.clamp(min=0))
        groups = torch.zeros(kept, device=index.device) if groups is None else groups.to(index.device).float()
        grid = g.tile_rows * g.tile_cols * g.num_patches
        slot = torch.arange(tiles * kept, device=index.device).reshape(tiles, kept).float()
        after = grid + (groups * tiles * kept).view(1, kept) + slot  # group, then tile, then slot
        keys = torch.where((tile_index >= 1) & (groups == 0), raster, after.unsqueeze(0))
        order = smallest_indices(keys.reshape(batch, tiles * kept), tiles * kept)
        tile_embeds = gather_rows(embeds[:, 1:].reshape(batch, tiles * kept, width), order)
        crop = torch.arange(crops, device=index.device).view(1, crops, 1)
        index = torch.where(index >= 0, encode_token_index(crop, index, g.num_patches), index)
        tile_index = index[:, 1:].reshape(batch, tiles * kept).gather(1, order)
        return torch.cat([embeds[:, 0], tile_embeds], dim=1), torch.cat([index[:, 0], tile_index], dim=1)
