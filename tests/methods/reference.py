"""Eager re-statements of each method's official algorithm, written from ../shared/methods-spec.md.

Deliberately in the style of the official code (per-image Python loops, boolean masks, torch.topk), not
the static formulation of vtp_export.methods, so that parity tests compare two independent codings.
Each returns (tokens before or after the projector as the method defines, source positions).
"""

import torch
from torch import Tensor

# CDPruner: the best gain (of max diag(L)) below which the official float32 loop picks by rounding (its downdated
# gains were measured off float64 by up to 1.7e-6 of max diag(L), tools/cdpruner_rounding.py); there both sides
# fill the remaining slots with the lowest unpicked tokens.
OFFICIAL_GAIN_ROUNDING = 1e-6



def fastervlm(hidden: Tensor, cls_attention: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    tokens, positions = [], []
    for b in range(hidden.shape[0]):
        attention = cls_attention[b, :, 1:].mean(dim=0)
        chosen = torch.topk(attention, keep).indices.sort().values
        tokens.append(hidden[b, 1:][chosen])
        positions.append(chosen + 1)
    return torch.stack(tokens), torch.stack(positions)


def visionzip(hidden: Tensor, cls_attention: Tensor, keys: Tensor, dominant: int, contextual: int) -> tuple[Tensor, Tensor]:
    batch, length, width = hidden.shape
    scores = cls_attention[:, :, 1:].sum(dim=1)
    top = scores.topk(dominant - 1, dim=1).indices + 1
    all_indices = torch.cat([torch.zeros(batch, 1, dtype=torch.long), top], dim=1)
    mask = torch.ones(batch, length, dtype=torch.bool).scatter_(1, all_indices, False)
    dominant_tokens = hidden.masked_select(~mask.unsqueeze(-1)).view(batch, dominant, width)
    dominant_positions = torch.arange(length).expand(batch, -1)[~mask].view(batch, dominant)
    if contextual == 0:
        return dominant_tokens, dominant_positions
    remaining = length - dominant
    metric = keys.mean(dim=1)[mask].view(batch, remaining, -1)
    filtered = hidden.masked_select(mask.unsqueeze(-1)).view(batch, remaining, width)
    filtered_positions = torch.arange(length).expand(batch, -1)[mask].view(batch, remaining)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    step = max(1, remaining // contextual)
    target_indices = torch.arange(0, remaining, step)[:contextual]
    is_target = torch.isin(torch.arange(remaining), target_indices)
    similarity = torch.bmm(metric[:, ~is_target], metric[:, target_indices].transpose(1, 2))
    assign = torch.zeros(batch, int((~is_target).sum()), contextual)
    assign.scatter_(2, similarity.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign.sum(dim=1).clamp(min=1).unsqueeze(-1)
    aggregated = torch.bmm(assign.transpose(1, 2), filtered[:, ~is_target]) / counts
    contextual_tokens = filtered[:, target_indices] + aggregated
    return (torch.cat([dominant_tokens, contextual_tokens], dim=1),
            torch.cat([dominant_positions, filtered_positions[:, target_indices]], dim=1))


def holov(projected: Tensor, attention: Tensor, keep: int, crops: int = 16, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """projected (B, N, D) post-projector patches, attention (B, N) CLS attention mean over heads."""
    batch, n, width = projected.shape
    out_tokens, out_positions = [], []
    for b in range(batch):
        size, extra = divmod(n, crops)
        chunks, start = [], 0
        for c in range(crops):
            length = size + (1 if c < extra else 0)
            if length > 0:
                chunks.append(torch.arange(start, start + length))
            start += length
        crop_scores = []
        for members in chunks:
            tokens, attn = projected[b, members], attention[b, members]
            m = len(members)
            if m <= 1:
                crop_scores.append(attn.mean())
                continue
            f = tokens / (tokens.norm(dim=1, keepdim=True) + eps)
            s = (f @ f.T) * (1 - torch.eye(m))
            mean = s.sum(dim=1) / (m - 1)
            variance = ((s - mean.unsqueeze(1)) ** 2).sum(dim=1) / (m - 1)
            scaled = attn * 1e3
            gamma = scaled.abs().mean() / (variance.abs().mean() + eps)
            crop_scores.append((scaled + 0.09 * variance * gamma).mean())
        scores = torch.stack(crop_scores)
        weights = scores / (scores.sum() + eps)
        allocated = (weights * keep).floor().long()
        remaining = keep - int(allocated.sum())
        if remaining > 0:
            for index in torch.topk(weights, k=min(remaining, len(weights))).indices[:remaining]:
                allocated[index] += 1
        chosen = []
        for members, quota in zip(chunks, allocated.tolist()):
            if quota <= 0:
                continue
            if quota >= len(members):
                chosen.append(members)
            else:
                chosen.append(members[torch.topk(attention[b, members], k=quota).indices])
        positions = torch.cat(chosen)[:keep]
        tokens = projected[b, positions]
        pad = keep - len(positions)
        out_tokens.append(torch.cat([tokens, torch.zeros(pad, width)]))
        out_positions.append(torch.cat([positions + 1, torch.full((pad,), -1)]))
    return torch.stack(out_tokens), torch.stack(out_positions)


def divprune(projected: Tensor, keep: int) -> tuple[Tensor, Tensor]:
    """projected (B, N, D): post-projector patches."""
    tokens, positions = [], []
    for b in range(projected.shape[0]):
        features = projected[b]
        unit = features / features.norm(dim=1, keepdim=True)
        distance = 1.0 - unit @ unit.T
        chosen = torch.empty(keep, dtype=torch.long)
        for i in range(keep):
            if i == 0:
                scores = torch.topk(distance, 2, dim=0, largest=False).values[1, :]
            else:
                scores = torch.min(torch.index_select(distance, 0, chosen[:i]), dim=0).values
            chosen[i] = torch.argmax(scores)
        chosen = chosen.sort().values
        tokens.append(features[chosen])
        positions.append(chosen + 1)
    return torch.stack(tokens), torch.stack(positions)



def _prumerge_complement(idx: Tensor, n: int) -> Tensor:
    """The official complement_idx: sort an arange with the listed positions zeroed, cut len(idx) entries."""
    masked = torch.arange(n).expand(idx.shape[0], -1).scatter(-1, idx, 0)
    return masked.sort(dim=-1).values[:, idx.shape[-1]:]


def prumerge(hidden: Tensor, q: Tensor, k: Tensor, kept: int, lattice: list[int] | None = None) -> tuple[Tensor, Tensor]:
    """hidden (B, 1+N, C) feature-layer output; q, k (B, 1+N, C) next layer's q_proj/k_proj outputs.

    `lattice`: PruMerge+'s non-adaptive spatial positions, appended without de-duplication.
    """
    features = hidden[:, 1:]
    batch, n, width = features.shape
    attn = torch.softmax((q @ k.transpose(-2, -1)) * width ** -0.5, dim=-1)[:, 0, 1:]
    _, idx = torch.topk(attn, kept, dim=1, largest=True)
    if lattice is not None:
        idx = torch.cat([idx, torch.tensor(lattice).expand(batch, -1)], dim=1)
    keys = k[:, 1:]
    x_others = torch.gather(features, 1, idx.unsqueeze(-1).expand(-1, -1, width))
    x_others_attn = torch.gather(attn, 1, idx)
    keys_others = torch.nn.functional.normalize(torch.gather(keys, 1, idx.unsqueeze(-1).expand(-1, -1, width)), dim=-1)
    compl = _prumerge_complement(idx, n)
    non_topk = torch.gather(features, 1, compl.unsqueeze(-1).expand(-1, -1, width))
    non_topk_keys = torch.nn.functional.normalize(torch.gather(keys, 1, compl.unsqueeze(-1).expand(-1, -1, width)), dim=-1)
    non_topk_attn = torch.gather(attn, 1, compl)
    updated = torch.zeros_like(x_others)
    for b in range(batch):
        for i in range(idx.shape[1]):
            rest_x = torch.cat([x_others[b, :i], x_others[b, i + 1:], non_topk[b]])
            rest_attn = torch.cat([x_others_attn[b, :i], x_others_attn[b, i + 1:], non_topk_attn[b]])
            rest_keys = torch.cat([keys_others[b, :i], keys_others[b, i + 1:], non_topk_keys[b]])
            cluster = torch.topk(keys_others[b, i] @ rest_keys.T, k=min(32, len(rest_keys))).indices
            updated[b, i] = x_others[b, i] + (rest_x[cluster] * rest_attn[cluster].unsqueeze(-1)).sum(dim=0)
    extra = (non_topk * non_topk_attn.unsqueeze(-1)).sum(dim=1, keepdim=True)
    positions = torch.cat([idx + 1, torch.full((batch, 1), -1)], dim=1)
    return torch.cat([updated, extra], dim=1), positions


def vispruner(patches: Tensor, attention: Tensor, keep: int, important_ratio: float = 0.5) -> Tensor:
    """patches (B, N, C) pre-projector, attention (B, N) CLS attention mean over heads -> kept positions (B, keep).

    The official loop; for an odd residual list it keeps every unpaired `a` candidate (the official code
    expands to R // 2 - r rows there and fails). Exact float ties of scores (they occur: hundreds of
    cosines per round) go to the lower list position, as the spec's tie rule says; argsort alone is unstable.
    """
    batch = patches.shape[0]
    important = int(keep * important_ratio)
    diverse = keep - important
    order = attention.argsort(dim=-1, descending=True, stable=True)
    important_indices, residual = order[:, :important], order[:, important:]
    normalized = patches / patches.norm(dim=-1, keepdim=True)
    rows = torch.arange(batch).unsqueeze(-1)
    while diverse > 0:
        r = min(8, residual.shape[1] - diverse)
        if r <= 0:
            break
        tokens = normalized[rows, residual]
        a, b = tokens[:, ::2], tokens[:, 1::2]
        scores = (a @ b.transpose(-1, -2)).max(dim=-1).values
        distinct = scores.argsort(dim=-1, descending=True, stable=True)[:, r:]
        residual = torch.cat([residual[:, ::2][rows, distinct], residual[:, 1::2]], dim=-1)
    selected = torch.cat([important_indices, residual], dim=-1) if diverse > 0 else important_indices
    return selected.sort(dim=-1).values + 1


def trim(patches: Tensor, image_embeds: Tensor, text_embeds: Tensor, kept: int | None) -> tuple[list[Tensor], list[Tensor]]:
    """patches (B, N, C) pre-projector; image_embeds (B, N, P) CLIP patch embeddings; text_embeds (B, P).

    kept=None: the official IQR count (k = -1), per image. Returns per image (tokens (n+1, C), positions).
    """
    import numpy as np

    tokens, positions = [], []
    for b in range(patches.shape[0]):
        similarities = torch.softmax(-(image_embeds[b] @ text_embeds[b]), dim=-1)
        n = patches.shape[1]
        if kept is None:
            values = similarities.numpy()
            q1, q3 = np.percentile(values, 25), np.percentile(values, 75)
            count = int(n * (len(np.where(values > q3 + 1.5 * (q3 - q1))[0]) / n))
        else:
            count = kept
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.topk(similarities, count, sorted=False).indices] = True
        remaining = patches[b][~mask].mean(dim=0, keepdim=True)
        tokens.append(torch.cat([patches[b][mask], remaining]))
        positions.append(torch.cat([mask.nonzero().squeeze(1) + 1, torch.tensor([-1])]))
    return tokens, positions


def cdpruner(projected: Tensor, image_embeds: Tensor, text_embeds: Tensor, keep: int,
             exhausted_gain: float = OFFICIAL_GAIN_ROUNDING) -> tuple[Tensor, Tensor]:
    """projected (B, N, D) post-projector; image_embeds (B, N, P), text_embeds (B, P). One image at a time
    (the official batch-wide min-max equals per-image at batch 1), in float64: the true picks that the
    float32 graph must reproduce. The official loop plus the stated exhausted-kernel rule: once the best
    gain is at most exhausted_gain x max diag(L), the lowest unpicked indices fill the remaining slots."""
    tokens, positions = [], []
    for b in range(projected.shape[0]):
        features = projected[b:b + 1].double()
        normalized = features / features.norm(dim=-1, keepdim=True)
        similarity = normalized @ normalized.transpose(1, 2)
        image = image_embeds[b:b + 1].double() / image_embeds[b:b + 1].double().norm(dim=-1, keepdim=True)
        text = text_embeds[b:b + 1].double() / text_embeds[b:b + 1].double().norm(dim=-1, keepdim=True)
        relevance = (-(image @ text.t())).mean(dim=-1)
        relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
        kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)
        n = kernel.shape[1]
        cis = torch.zeros(keep, 1, n, dtype=torch.float64)
        di2s = torch.diagonal(kernel, dim1=1, dim2=2).clone()
        floor = exhausted_gain * di2s.max()
        select = torch.empty(keep, 1, dtype=torch.long)
        for i in range(keep):
            j = torch.argmax(di2s, dim=-1)
            if di2s[0, j] <= floor:
                unpicked = [t for t in range(n) if t not in select[:i, 0].tolist()]
                select[i:, 0] = torch.tensor(unpicked[:keep - i])
                break
            select[i] = j
            eis = (kernel[torch.arange(1), j] - torch.einsum('tb,tbn->bn', cis[:i, torch.arange(1), j], cis[:i])) \
                / torch.sqrt(di2s[torch.arange(1), j]).unsqueeze(-1)
            cis[i] = eis
            di2s -= torch.square(eis)
            di2s[torch.arange(1), j] = -float('inf')
        chosen = torch.sort(select.t()).values[0]
        tokens.append(projected[b, chosen])
        positions.append(chosen + 1)
    return torch.stack(tokens), torch.stack(positions)


def cdpruner_openvino(projected: Tensor, text_embeds: Tensor, keep: int, relevance_weight: float = 1.0,
                      epsilon: float = 1e-6, dpp_epsilon: float = 1e-6,
                      exhausted_gain: float = OFFICIAL_GAIN_ROUNDING) -> tuple[Tensor, Tensor]:
    """OpenVINO GenAI's CDPruner for the Qwen family (openvino.genai@da1db864, cdpruner/conditional_kernel.cpp
    create_conditional_kernel_model and fast_dpp.cpp select_single_batch), one image at a time, split threshold 0,
    in float64. projected (B, N, D) the merger's output; text_embeds (B, D) the prompt's mean LLM input embedding.
    NormalizeL2 with `epsilon` added to the squared norm, cosine with the one text row (mean over it), not negated,
    min-max (r - min) / (max - min + epsilon), kernel (1 - w) S + w r_i S_ij r_j; the greedy loop divides by
    sqrt(di2s + dpp_epsilon) and skips previous vectors whose entry at the pick is below dpp_epsilon. Plus the
    stated exhausted-kernel rule, as in cdpruner() above."""
    tokens, positions = [], []
    for b in range(projected.shape[0]):
        features = projected[b:b + 1].double()
        visual = features / torch.sqrt(features.square().sum(dim=-1, keepdim=True) + epsilon)
        text = text_embeds[b:b + 1].double()
        text = text / torch.sqrt(text.square().sum(dim=-1, keepdim=True) + epsilon)
        relevance = (visual @ text.t()).mean(dim=-1)  # (1, N)
        low, high = relevance.min(dim=1, keepdim=True).values, relevance.max(dim=1, keepdim=True).values
        relevance = (relevance - low) / (high - low + epsilon)
        similarity = visual @ visual.transpose(1, 2)
        conditional = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)
        kernel = (similarity * (1 - relevance_weight) + conditional * relevance_weight)[0]
        n = kernel.shape[0]
        cis = torch.zeros(keep, n, dtype=torch.float64)
        di2s = torch.diagonal(kernel).clone()
        floor = exhausted_gain * di2s.max()
        selected: list[int] = []
        for t in range(keep):
            best = int(torch.argmax(di2s))
            if di2s[best] <= floor:
                selected += [i for i in range(n) if i not in selected][:keep - t]
                break
            selected.append(best)
            eis = kernel[best].clone()
            for previous in range(t):
                if abs(float(cis[previous, best])) >= dpp_epsilon:
                    eis -= cis[previous, best] * cis[previous]
            cis[t] = eis / torch.sqrt(di2s[best] + dpp_epsilon)
            di2s -= cis[t].square()  # picked tokens stay at -inf
            di2s[best] = -float('inf')
        chosen = torch.tensor(sorted(selected))
        tokens.append(projected[b, chosen])
        positions.append(chosen + 1)
    return torch.stack(tokens), torch.stack(positions)


def holov_paper(projected: Tensor, attention: Tensor, keep: int, side: int, tau: float,
                eps: float = 1e-6, grid: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """HoloV eq. 1-5 as methods-spec.md states them, one image and one crop at a time; `grid` (rows, cols) of a
    non-square token grid."""
    batch, n, _ = projected.shape
    rows, cols = grid or (int(n ** 0.5), int(n ** 0.5))
    row_edges = [i * rows // side for i in range(side + 1)]
    col_edges = [j * cols // side for j in range(side + 1)]
    crops = [torch.tensor([r * cols + c for r in range(row_edges[i], row_edges[i + 1])
                           for c in range(col_edges[j], col_edges[j + 1])])
             for i in range(side) for j in range(side)]
    out_tokens, out_positions = [], []
    for b in range(batch):
        holistic, crop_scores = torch.zeros(n), []
        for members in crops:
            m = len(members)
            tokens, attn = projected[b, members], attention[b, members] * 1e3
            f = tokens / (tokens.norm(dim=1, keepdim=True) + eps)
            s = (f @ f.T) * (1 - torch.eye(m))
            mean = s.sum(dim=1) / max(m - 1, 1)
            variance = ((s - mean.unsqueeze(1)) ** 2).sum(dim=1) / max(m - 1, 1)
            gamma = attn.abs().mean() / (variance.abs().mean() + eps)
            holistic[members] = attn + 0.09 * gamma * variance
            crop_scores.append(holistic[members].mean() if m > 1 else attention[b, members].mean())
        weights = torch.softmax(torch.stack(crop_scores) / tau, dim=0)
        sizes = torch.tensor([float(len(c)) for c in crops])
        quota = torch.minimum(torch.floor(weights * keep), sizes)
        for _ in range(len(crops)):
            room = weights * (sizes - quota)
            quota = torch.minimum(quota + torch.floor((keep - quota.sum()) * room / max(float(room.sum()), eps)), sizes)
        chosen = torch.zeros(n, dtype=torch.bool)
        for members, q in zip(crops, quota.long().tolist()):
            ranked = sorted(range(len(members)), key=lambda i: (-float(holistic[members[i]]), i))
            chosen[members[ranked[:q]]] = True
        undecided = sorted((p for p in range(n) if not chosen[p]), key=lambda p: (-float(holistic[p]), p))
        chosen[undecided[:keep - int(quota.sum())]] = True
        positions = chosen.nonzero().squeeze(1)
        out_tokens.append(projected[b, positions])
        out_positions.append(positions + 1)
    return torch.stack(out_tokens), torch.stack(out_positions)


def qwen_patch_rows(pixel_values: Tensor) -> tuple[Tensor, Tensor]:
    """One normalised image (1, 3, H, W) -> Qwen2-VL's processor rows and image_grid_thw (its patchify re-stated:
    2x2 merge units in raster order, 14x14 patches, the still frame repeated along T = 2)."""
    _, channels, height, width = pixel_values.shape
    x = pixel_values.reshape(channels, height // 28, 2, 14, width // 28, 2, 14).permute(1, 4, 2, 5, 0, 3, 6)
    x = x.unsqueeze(5).expand(-1, -1, -1, -1, -1, 2, -1, -1)
    return x.reshape(-1, channels * 2 * 14 * 14), torch.tensor([[1, height // 14, width // 14]])


def holov_qwen_scores(visual, rows: Tensor, grid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """HoloV's official Qwen2.5-VL tower (obananas/HoloV@dee615c qwen-model-HoloV/modeling_qwen2_5_vl.py, the
    vision transformer's forward and utils.py::scaled_dot_product_attention) on HF's tower, one image: the last
    block's N x N softmax under its window mask, mean over heads, mean over queries, groups of 4 consecutive
    tokens averaged. Returns the merged tokens in raster order (M, D), the scores in the tower's WINDOW order (M,)
    as the official code leaves them, and HF's window_index (M,)."""
    import math

    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
    from transformers.vision_utils import get_vision_window_index

    captured = {}
    last = visual.blocks[-1].attn

    def hook(module, args, kwargs):
        captured.update(hidden=args[0] if args else kwargs["hidden_states"], cu=kwargs["cu_seqlens"],
                        rope=kwargs["position_embeddings"])

    handle = last.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        merged = visual(rows, grid_thw=grid).pooler_output
    finally:
        handle.remove()
    hidden, cu = captured["hidden"], captured["cu"]
    n = hidden.shape[0]
    q, k, _ = last.qkv(hidden).reshape(n, 3, last.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = apply_rotary_pos_emb_vision(q, k, *captured["rope"])
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for i in range(1, len(cu)):
        allowed[cu[i - 1]:cu[i], cu[i - 1]:cu[i]] = True
    logits = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    attention = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    window_scores = attention.mean(dim=0).mean(dim=0).view(-1, 4).mean(dim=1)
    window_index, _ = get_vision_window_index(grid, visual.spatial_merge_size, visual.window_size, visual.patch_size)
    return merged, window_scores, window_index


def holov_qwen(merged: Tensor, window_scores: Tensor, window_index: Tensor, keep: int,
               vision_start: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """HoloV's official Qwen2.5-VL glue (qwen-model-HoloV/modeling_qwen2_5_vl.py, Qwen2_5_VLForConditionalGeneration
    .forward) around utils.py::HoloV, one image: keep rows out of max(1, int(((1024/576) * M) / keep)) chunks,
    HoloV() as in the LLaVA code (`holov` above) on a span scored slot by slot.

    merged (M, D) raster; window_scores (M,) in window order (holov_qwen_scores). With vision_start (D,), the
    official code exactly: the span starts at <|vision_start|> ([vision_start, merged[0 .. M-2]]; merged[M-1]
    then always follows the kept rows) and slot j is ranked by window_scores[j] (the scores are never put back
    in raster order). Without it, both fixed: the span is the M merged tokens, each ranked by its own score.
    Returns the K rows and their span slots + 1 (-1 padding)."""
    m = merged.shape[0]
    crops = max(1, int(((1024 / 576) * m) / keep))
    if vision_start is not None:
        span, scores = torch.cat([vision_start.reshape(1, -1), merged[:m - 1]]), window_scores
    else:
        span, scores = merged, torch.empty_like(window_scores).index_copy_(0, window_index, window_scores)
    tokens, positions = holov(span.unsqueeze(0), scores.unsqueeze(0), keep, crops)
    return tokens[0], positions[0]


def dart(projected: Tensor, keep: int, pivots: int = 4) -> tuple[Tensor, Tensor]:
    """TensorRT Edge-LLM's embedding-level DART (cpp/runtime/preprocess/dartPruner.cpp, as its documentation
    describes it), image pivots only, one image and one pivot at a time: pivots by L1 norm, then per pivot
    ceil(remaining / pivots left) of the remaining tokens by most negative cosine, kept list sorted."""
    tokens, positions = [], []
    for b in range(projected.shape[0]):
        x = projected[b]
        n = x.shape[0]
        count = min(pivots, keep)
        order = sorted(range(n), key=lambda i: (-float(x[i].abs().sum()), i))
        retained = order[:count]
        pool = [i for i in range(n) if i not in retained]
        for p, pivot in enumerate(list(retained)):
            per = -(-(keep - len(retained)) // (count - p))
            if per <= 0 or not pool:
                break
            cosine = {i: float(x[pivot] @ x[i]) / max(float(x[pivot].norm() * x[i].norm()), 1e-8) for i in pool}
            picked = sorted(pool, key=lambda i: (cosine[i], i))[:per]
            retained += picked
            pool = [i for i in pool if i not in picked]
        chosen = torch.tensor(sorted(retained))
        tokens.append(x[chosen])
        positions.append(chosen + 1)
    return torch.stack(tokens), torch.stack(positions)


def evs(video_embeds: Tensor, grid_thw: tuple[int, int, int], retained: int, merge: int = 2) -> Tensor:
    """EVS as vLLM codes it (vllm-project/vllm@926c71f vllm/multimodal/evs.py compute_retention_mask), one video's
    merger output (G * M, D) in video order -> the retention mask (G * M,) bool. vLLM derives `retained` from a
    pruning rate q as max(M, int(G * M * (1 - q))); here it is given."""
    groups, height, width = grid_thw
    video = video_embeds.reshape(groups, height // merge, width // merge, video_embeds.shape[-1])
    dissimilarity = 1 - torch.nn.functional.cosine_similarity(video[1:], video[:-1], dim=-1)
    dissimilarity = torch.cat([255 * torch.ones_like(video[:1, :, :, 0]), dissimilarity], dim=0).view(-1)
    order = torch.argsort(dissimilarity, dim=-1, descending=True, stable=True)
    mask = torch.zeros_like(dissimilarity, dtype=torch.bool)
    mask[order[:retained]] = True
    return mask
