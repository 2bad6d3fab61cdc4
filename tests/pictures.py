"""The random pictures the runtime tests feed their exports: uint8 RGB noise, seeded."""

import numpy as np


def picture(seed: int = 0, size: tuple[int, int] = (300, 240)) -> np.ndarray:
    """A (height, width, 3) uint8 picture of `size` = (width, height)."""
    return (np.random.default_rng(seed).random((size[1], size[0], 3)) * 255).astype(np.uint8)
