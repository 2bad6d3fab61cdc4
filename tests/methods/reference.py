"""Eager re-statements of each method's official algorithm, written from ../shared/methods-spec.md.

Deliberately in the style of the official code (per-image Python loops, boolean masks, torch.topk), not
the static formulation of vtp_export.methods, so that parity tests compare two independent codings.
Each returns (tokens before or after the projector as the method defines, source positions).
"""

import torch
from torch import Tensor


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

