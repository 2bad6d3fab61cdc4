"""The token_index codec: which encoder position of which crop each of an image's output tokens comes from.

The models own it: their crop layouts (models/layout.py) encode it in the graph, their position policies
(models/base.py image_positions) decode it at run time. Torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np


def encode_token_index(crop: Any, position: Any, num_patches: int) -> Any:
    """token_index of encoder position `position` (CLS 0, patches 1..N) of crop `crop`: crop * (N + 1) + position
    (ints, numpy or torch alike)."""
    return crop * (num_patches + 1) + position


def decode_token_index(token_index: np.ndarray, num_patches: int) -> tuple[np.ndarray, np.ndarray]:
    """(crop, encoder position) of each token_index (NO_SOURCE decodes to crop -1: callers mask it)."""
    import numpy as np

    return np.divmod(token_index, num_patches + 1)
