"""How two runs of a vision graph agree on what they kept: kept-set overlap, embeddings of shared tokens."""

import numpy as np


def set_overlap(got: np.ndarray, want: np.ndarray) -> float:
    """Smallest per-row share of want's real source tokens (token_index >= 0) that got also kept."""
    shares = []
    for have, expected in zip(got, want):
        real = set(expected[expected >= 0].tolist())
        shares.append(len(real & set(have.tolist())) / len(real) if real else 1.0)
    return min(shares)


def matched_rows(got_index: np.ndarray, want_index: np.ndarray) -> tuple[tuple, tuple]:
    """(row, slot) index pairs of got and of want holding the same source token, for comparing embeds by source."""
    got_at, want_at = [], []
    for b, (have, expected) in enumerate(zip(got_index, want_index)):
        slot_of = {int(t): j for j, t in enumerate(expected) if t >= 0}
        for i, t in enumerate(have):
            if int(t) in slot_of:
                got_at.append((b, i))
                want_at.append((b, slot_of[int(t)]))
    return tuple(np.array(got_at, dtype=np.int64).reshape(-1, 2).T), tuple(np.array(want_at, dtype=np.int64).reshape(-1, 2).T)
