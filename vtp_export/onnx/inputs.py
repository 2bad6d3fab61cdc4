"""Seeded random graph inputs for verification, engine comparisons and calibration-free checks (numpy only)."""

import numpy as np

from vtp_export.contract import Geometry
from vtp_export.models.clip import CLIP_MEAN, CLIP_STD
from vtp_export.onnx.names import PIXEL_VALUES

Arrays = dict[str, np.ndarray]  # one sample's graph inputs or outputs by name


def pixel_shape(geometry: Geometry, batch: int) -> tuple[int, ...]:
    """pixel_values as the vision graph takes them: (B, 3, H, W), (B, crops, 3, H, W) for AnyRes crops, or
    (B, F, 3, H, W) for a video of F frames."""
    crops = (geometry.frames,) if geometry.frames else (geometry.crops,) if geometry.crops > 1 else ()
    return (batch, *crops, 3, geometry.image_height, geometry.image_width)


def random_pixel_values(geometry: Geometry, batch: int, seed: int) -> np.ndarray:
    """Images of uniform random colours in [0, 1], normalised with CLIP's mean and std as every supported
    model's processor does; float32."""
    images = np.random.default_rng(seed).random(pixel_shape(geometry, batch), dtype=np.float32)
    mean = np.array(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.array(CLIP_STD, dtype=np.float32).reshape(3, 1, 1)
    return (images - mean) / std


def verification_inputs(geometry: Geometry, batch: int, samples: int, seed: int) -> list[Arrays]:
    return [{PIXEL_VALUES: random_pixel_values(geometry, batch, seed + i)} for i in range(samples)]


def random_prompt_embeds(batch: int, width: int, seed: int) -> np.ndarray:
    """(B, width) float32 standard normal rows: stand-ins for the prompt's mean LLM input embedding (text_embeds of
    prompt-conditioned methods, Signal.PROMPT_EMBEDS); only their direction matters to the method (a cosine)."""
    return np.random.default_rng(seed).standard_normal((batch, width), dtype=np.float32)


def random_input_ids(batch: int, length: int, vocab: int, seed: int) -> np.ndarray:
    """Ids laid out like CLIP's tokenizer output padded to `length`: BOS, random text, EOS, EOS padding.

    CLIP's vocabulary ends with <|startoftext|>, <|endoftext|>.
    """
    generator = np.random.default_rng(seed)
    bos, eos = vocab - 2, vocab - 1
    ids = np.full((batch, length), eos, dtype=np.int64)
    for row in ids:
        end = int(generator.integers(2, length))
        row[0] = bos
        row[1:end] = generator.integers(0, bos, end - 1)
    return ids
