"""Eager references of each pruning method's official LLaVA-NeXT (AnyRes) path, for ONE image on a FIXED grid.

Written from the official repositories at these commits (read, not copied):
  VisionZip  dvlab-research/VisionZip @3151f6d   visionzip/llava_arch.py  restore_image_features_sorted
  CDPruner   Theia-4869/CDPruner      @9541616   llava/model/llava_arch.py encode_images + spatial branch
  VisPruner  Theia-4869/VisPruner     @aefa01a   llava/model/llava_arch.py encode_images + spatial branch
  FasterVLM  Theia-4869/FasterVLM     @f5d5f12   llava/model/llava_arch.py encode_images + spatial branch
  HoloV      obananas/HoloV           @1d2e65e   llava/model/llava_arch.py spatial branch + llava/model/utils.py HoloV

Conventions (static grid, `rows` x `cols` tiles of N = side^2 patches, side = g):
  * crop 0 is the base (whole image squashed to S x S), crops 1..rows*cols are the tiles in raster order, exactly
    as HF's LlavaNextImageProcessor stacks pixel_values for image_grid_pinpoints=[[rows*S, cols*S]];
  * inputs are per-crop tensors, crop axis first: hidden (M, 1+N, C) feature-layer output with CLS first,
    cls_attention (M, H, 1+N) the CLS row of that layer's softmax attention, keys (M, H, 1+N, d_h),
    projected (M, N, D) post-projector patch tokens, clip_patch_embeds (M, N, P), M = 1 + rows*cols;
  * token_index = crop * (N + 1) + encoder position (CLS 0, patches 1..N); merged tokens carry their anchor,
    padding -1 (as methods/base.py on LLaVA-1.5);
  * "full-grid raster": tile (tr, tc), patch (pr, pc) sits at global row tr*g + pr, global column tc*g + pc of a
    (rows*g) x (cols*g) grid, read row-major: raster index = row * (cols*g) + col;
  * no unpadding and no image_newline: the fixed canvas is the grid (only HoloV unpads officially).
Per-image Python loops and boolean masks, in the style of the official code, not the static formulation.
Where these differ from the official code (fixed grid, no unpad) is stated in README and the methods' modules.
"""

import math

import torch
from torch import Tensor

from tests.methods.reference import OFFICIAL_GAIN_ROUNDING, holov

# ----------------------------------------------------------------------------------------------------------------
# Grid helpers
# ----------------------------------------------------------------------------------------------------------------

def side_of(num_patches: int) -> int:
    side = math.isqrt(num_patches)
    assert side * side == num_patches, f"{num_patches} patches is not a square grid"
    return side


def raster_slots(rows: int, cols: int, side: int) -> Tensor:
    """(rows*cols*side^2,) for each full-grid raster position, the flat index tile * N + patch of its source
    (tile 0-based in raster order, patch 0-based row-major inside the tile)."""
    n = side * side
    slots = []
    for row in range(rows * side):
        tile_row, patch_row = divmod(row, side)
        for col in range(cols * side):
            tile_col, patch_col = divmod(col, side)
            slots.append((tile_row * cols + tile_col) * n + patch_row * side + patch_col)
    return torch.tensor(slots, dtype=torch.long)


def global_raster_index(tile: int, patch: int, cols: int, side: int) -> int:
    """Full-grid raster index of patch `patch` (0-based) of tile `tile` (0-based, raster order)."""
    tile_row, tile_col = divmod(tile, cols)
    patch_row, patch_col = divmod(patch, side)
    return (tile_row * side + patch_row) * (cols * side) + tile_col * side + patch_col


def encoder_index(crop: int, position: int, num_patches: int) -> int:
    """token_index of encoder position `position` (0 = CLS, 1..N) of crop `crop` (0 = base)."""
    return crop * (num_patches + 1) + position


def spatial_select(features: Tensor, masks: Tensor, rows: int, cols: int) -> tuple[Tensor, Tensor]:
    """The official 'spatial' merge of Theia-4869's repos with '_unpad' removed, for one image:
    base crop tokens where mask, ascending; then the tiles' tokens where mask, in full-grid raster order.

    features (M, N, D), masks (M, N) bool. Returns (tokens (T, D), token_index (T,)) for the patch tokens.
    """
    m, n, width = features.shape
    side = side_of(n)
    positions = torch.arange(1, n + 1).expand(m, n)
    offsets = torch.arange(m).unsqueeze(1) * (n + 1)
    index = positions + offsets
    base_tokens, base_index = features[0][masks[0]], index[0][masks[0]]
    grid = features[1:].view(rows, cols, side, side, width).permute(0, 2, 1, 3, 4).flatten(0, 3)
    grid_mask = masks[1:].view(rows, cols, side, side).permute(0, 2, 1, 3).flatten(0, 3)
    grid_index = index[1:].view(rows, cols, side, side).permute(0, 2, 1, 3).flatten(0, 3)
    return (torch.cat([base_tokens, grid[grid_mask]]), torch.cat([base_index, grid_index[grid_mask]]))


def next_sequence(features: Tensor, rows: int, cols: int) -> tuple[Tensor, Tensor]:
    """HF/LLaVA 'spatial' sequence without unpad and newline: base crop raster, then the full-grid raster.
    features (M, N, D) or (M, N) -> ((M*N, D) or (M*N,), token_index (M*N,))."""
    if features.dim() == 2:
        tokens, index = spatial_select(features.unsqueeze(-1), torch.ones(features.shape, dtype=torch.bool), rows, cols)
        return tokens.squeeze(-1), index
    return spatial_select(features, torch.ones(features.shape[:2], dtype=torch.bool), rows, cols)


# ----------------------------------------------------------------------------------------------------------------
# FasterVLM (per crop top-k by CLS attention, same k per crop)
# ----------------------------------------------------------------------------------------------------------------

def fastervlm_next(hidden: Tensor, cls_attention: Tensor, rows: int, cols: int, keep_per_crop: int
                   ) -> tuple[Tensor, Tensor]:
    """-> pre-projector tokens (M*k, C) [base kept ascending, tiles' kept in full-grid raster], token_index."""
    patches = hidden[:, 1:]
    m, n, _ = patches.shape
    attention = cls_attention[:, :, 1:].mean(dim=1)
    masks = torch.zeros(m, n, dtype=torch.bool)
    for crop in range(m):
        masks[crop, torch.topk(attention[crop], keep_per_crop).indices] = True
    return spatial_select(patches, masks, rows, cols)


# ----------------------------------------------------------------------------------------------------------------
# VisPruner (per crop: T_imp by CLS attention + T_div by iterative de-duplication)
# ----------------------------------------------------------------------------------------------------------------

def vispruner_next(hidden: Tensor, cls_attention: Tensor, rows: int, cols: int, keep_per_crop: int,
                   important_ratio: float = 0.5) -> tuple[Tensor, Tensor]:
    """-> pre-projector tokens (M*k, C) [base kept ascending, tiles' kept in full-grid raster], token_index.
    Exact score ties go to the lower list position (stable sorts), and an odd residual list keeps its unpaired
    candidates, as in reference.vispruner."""
    patches = hidden[:, 1:]
    m, n, _ = patches.shape
    important = int(keep_per_crop * important_ratio)
    diverse = keep_per_crop - important
    attention = cls_attention[:, :, 1:].mean(dim=1)
    normalized = patches / patches.norm(dim=-1, keepdim=True)
    masks = torch.zeros(m, n, dtype=torch.bool)
    for crop in range(m):
        order = attention[crop].argsort(descending=True, stable=True)
        chosen, residual = order[:important], order[important:]
        remaining = diverse
        while remaining > 0:
            r = min(8, len(residual) - remaining)
            if r <= 0:
                break
            evens, odds = residual[::2], residual[1::2]
            similarity = normalized[crop, evens] @ normalized[crop, odds].T
            redundancy = similarity.max(dim=-1).values
            survivors = redundancy.argsort(descending=True, stable=True)[r:]
            residual = torch.cat([evens[survivors], odds])
        if diverse > 0:
            chosen = torch.cat([chosen, residual])
        masks[crop, chosen] = True
    return spatial_select(patches, masks, rows, cols)


# ----------------------------------------------------------------------------------------------------------------
# CDPruner (per crop conditional DPP; relevance min-max over ALL crops of the image together)
# ----------------------------------------------------------------------------------------------------------------

def cdpruner_next(projected: Tensor, clip_patch_embeds: Tensor, text_embeds: Tensor, rows: int, cols: int,
                  keep_per_crop: int, relevance_scope: str = "image", exhausted_gain: float = OFFICIAL_GAIN_ROUNDING
                  ) -> tuple[Tensor, Tensor]:
    """projected (M, N, D) post-projector patches; clip_patch_embeds (M, N, P); text_embeds (T, P) or (P,):
    the question's CLIP text embedding(s), T = 77-token segments (the same text for every crop).

    relevance_scope='image' (official): rel = mean over segments of -cos(patch, text), then ONE min-max over the
    whole (M, N) tensor of the image's crops; 'crop': min-max per crop (= LLaVA-1.5 applied per crop).
    Float64 and the exhausted-kernel rule as reference.cdpruner.
    -> post-projector tokens (M*k, D) [base kept ascending, tiles' kept in full-grid raster], token_index."""
    m, n, _ = projected.shape
    text = text_embeds.double().reshape(-1, text_embeds.shape[-1])
    text = text / text.norm(dim=-1, keepdim=True)
    image = clip_patch_embeds.double()
    image = image / image.norm(dim=-1, keepdim=True)
    relevance = (-(image @ text.T)).mean(dim=-1)  # (M, N)
    if relevance_scope == "image":
        relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    elif relevance_scope == "crop":
        low, high = relevance.min(dim=1, keepdim=True).values, relevance.max(dim=1, keepdim=True).values
        relevance = (relevance - low + 1e-6) / (high - low)
    else:
        raise ValueError(relevance_scope)
    masks = torch.zeros(m, n, dtype=torch.bool)
    for crop in range(m):
        features = projected[crop].double()
        unit = features / features.norm(dim=-1, keepdim=True)
        kernel = relevance[crop].unsqueeze(1) * (unit @ unit.T) * relevance[crop].unsqueeze(0)
        gains = torch.diagonal(kernel).clone()
        floor = exhausted_gain * gains.max()
        directions = torch.zeros(keep_per_crop, n, dtype=torch.float64)
        picked: list[int] = []
        for i in range(keep_per_crop):
            j = int(torch.argmax(gains))
            if gains[j] <= floor:
                picked += [t for t in range(n) if t not in picked][:keep_per_crop - i]
                break
            picked.append(j)
            direction = (kernel[j] - directions[:i, j] @ directions[:i]) / torch.sqrt(gains[j])
            directions[i] = direction
            gains -= direction ** 2
            gains[j] = -float("inf")
        masks[crop, torch.tensor(picked)] = True
    return spatial_select(projected, masks, rows, cols)


# ----------------------------------------------------------------------------------------------------------------
# VisionZip (per crop dominant incl. CLS + contextual; restore_image_features_sorted layout)
# ----------------------------------------------------------------------------------------------------------------

def _visionzip_crop(hidden: Tensor, cls_attention: Tensor, keys: Tensor, dominant: int, contextual: int
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One crop, as visionzip/clip_encoder.py: -> (dominant tokens [CLS, patches ascending] (dominant, C),
    their encoder positions, contextual tokens (contextual, C), their anchor positions)."""
    length = hidden.shape[0]
    scores = cls_attention[:, 1:].sum(dim=0)
    top = torch.topk(scores, dominant - 1).indices + 1
    keep = torch.zeros(length, dtype=torch.bool)
    keep[0] = True
    keep[top] = True
    positions = torch.arange(length)
    dominant_tokens, dominant_positions = hidden[keep], positions[keep]
    if contextual == 0:
        return dominant_tokens, dominant_positions, hidden[:0], positions[:0]
    rest, rest_positions = hidden[~keep], positions[~keep]
    metric = keys.mean(dim=0)[~keep]
    metric = metric / metric.norm(dim=-1, keepdim=True)
    step = max(1, len(rest) // contextual)
    targets = torch.arange(0, len(rest), step)[:contextual]
    is_target = torch.zeros(len(rest), dtype=torch.bool)
    is_target[targets] = True
    assignment = (metric[~is_target] @ metric[targets].T).argmax(dim=1)
    merged = torch.zeros(contextual, hidden.shape[1], dtype=hidden.dtype)
    counts = torch.zeros(contextual, dtype=hidden.dtype)
    merged.index_add_(0, assignment, rest[~is_target])
    counts.index_add_(0, assignment, torch.ones(len(assignment), dtype=hidden.dtype))
    contextual_tokens = rest[targets] + merged / counts.clamp(min=1).unsqueeze(1)
    return dominant_tokens, dominant_positions, contextual_tokens, rest_positions[targets]


def visionzip_next(hidden: Tensor, cls_attention: Tensor, keys: Tensor, rows: int, cols: int, dominant: int,
                   contextual: int) -> tuple[Tensor, Tensor]:
    """`dominant` counts CLS (official visionzip(model, dominant, contextual) passes dominant-1 patches).
    -> pre-projector tokens (M*(dominant+contextual), C) in the official NeXT order:
       [base: CLS, dominant patches ascending, contextual (target order)]
       [tiles' dominant patches (CLS excluded) in full-grid raster order]
       [tiles' CLS tokens, tile order]
       [tiles' contextual tokens, tile-major, target order]
    and token_index (CLS = crop*(N+1), contextual = crop*(N+1) + anchor)."""
    m, length, width = hidden.shape
    n = length - 1
    side = side_of(n)
    per_crop = [_visionzip_crop(hidden[c], cls_attention[c], keys[c], dominant, contextual) for c in range(m)]
    offset = lambda crop: crop * (n + 1)  # noqa: E731
    base_dom, base_dom_pos, base_ctx, base_ctx_pos = per_crop[0]
    tokens = [base_dom, base_ctx]
    index = [base_dom_pos + offset(0), base_ctx_pos + offset(0)]
    # restore_image_features_sorted: scatter every tile's dominant patches into the (rows*g) x (cols*g) grid
    # (positions sorted; the first kept index, CLS, dropped; patch = position - 1), read the mask in raster order.
    canvas = torch.zeros(rows * cols, n, width, dtype=hidden.dtype)
    canvas_index = torch.full((rows * cols, n), -1, dtype=torch.long)
    mask = torch.zeros(rows * cols, n, dtype=torch.bool)
    for tile in range(rows * cols):
        dom, dom_pos, _, _ = per_crop[tile + 1]
        patch = dom_pos[1:] - 1
        mask[tile, patch] = True
        canvas[tile, patch] = dom[1:]
        canvas_index[tile, patch] = dom_pos[1:] + offset(tile + 1)
    grid = canvas.view(rows, cols, side, side, width).permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, width)
    grid_index = canvas_index.view(rows, cols, side, side).permute(0, 2, 1, 3).reshape(rows * side, cols * side)
    grid_mask = mask.view(rows, cols, side, side).permute(0, 2, 1, 3).reshape(rows * side, cols * side)
    tokens.append(grid[grid_mask])
    index.append(grid_index[grid_mask])
    tokens.append(torch.stack([per_crop[c][0][0] for c in range(1, m)]))
    index.append(torch.tensor([offset(c) for c in range(1, m)]))
    tokens.append(torch.cat([per_crop[c][2] for c in range(1, m)]))
    index.append(torch.cat([per_crop[c][3] + offset(c) for c in range(1, m)]))
    return torch.cat(tokens), torch.cat(index)


# ----------------------------------------------------------------------------------------------------------------
# HoloV (one budget over base + grid sequence, 16 contiguous chunks)
# ----------------------------------------------------------------------------------------------------------------

def holov_next(projected: Tensor, cls_attention: Tensor, rows: int, cols: int, keep: int, chunks: int = 16,
               eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """projected (M, N, D) post-projector patches; cls_attention (M, H, 1+N) (each crop's own CLS row).
    Sequence = base crop raster then the full-grid raster (HoloV's spatial branch, newline commented out); the
    attention is the per-crop CLS row mean over heads in float32, arranged the same way. The static form: the
    official code first unpads features and attention by the image's size (data-dependent), which removes
    nothing for an image of the grid's aspect.
    -> (tokens (keep, D) zero-padded, token_index (keep,) with -1 on padding): chunk by chunk, a whole chunk in
    raster order when its quota covers it, else its top-quota tokens by attention in descending order."""
    attention = cls_attention[:, :, 1:].float().mean(dim=1)
    sequence, index = next_sequence(projected, rows, cols)
    scores, _ = next_sequence(attention, rows, cols)
    tokens, positions = holov(sequence.unsqueeze(0), scores.unsqueeze(0), keep, chunks, eps)  # HoloV() as on LLaVA
    kept = positions[0]
    return tokens[0], torch.where(kept >= 1, index[(kept - 1).clamp(min=0)], kept)
