"""Calibration batches for int8 / fp8 quantization: images from a folder, preprocessed exactly as the runtime
preprocesses them (the model's HF processor code), or seeded random images where the weights are random too."""

from pathlib import Path

import numpy as np

from vtp_export.contract import Geometry
from vtp_export.errors import UsageError
from vtp_export.models.base import VisionLanguageModel
from vtp_export.onnx.inputs import Arrays, random_pixel_values
from vtp_export.onnx.names import PIXEL_VALUES, TEXT_EMBEDS
from vtp_export.util.images import load_image

RANDOM = "random"
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
RANDOM_BATCHES = 8  # random calibration: batches of the graph's batch size


def calibration_inputs(source: str | Path, model: VisionLanguageModel, geometry: Geometry, batch: int,
                       random_weights: bool, seed: int = 0, text_embeds: np.ndarray | None = None) -> list[Arrays]:
    """Graph feeds for calibration, one dict per batch of `batch` images. `source`: a folder of images (sorted
    by name; a last partial batch is left out) or "random" (only with random weights: real weights calibrated
    on noise would quantize for inputs they never see). Text-conditioned graphs get `text_embeds` (batch, P)
    with every batch."""
    if str(source) == RANDOM:
        if not random_weights:
            raise UsageError("--calibration random is only for --random-weights exports: calibrate real weights "
                             "on a folder of images (--calibration DIR)")
        batches = [random_pixel_values(geometry, batch, seed + i) for i in range(RANDOM_BATCHES)]
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise UsageError(f"--calibration {folder}: not a folder of images (or 'random')")
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if len(images) < batch:
            raise UsageError(f"--calibration {folder}: {len(images)} images, the graph's batch needs at least {batch}")
        batches = [model.preprocess([load_image(p) for p in images[i:i + batch]], geometry)
                   for i in range(0, len(images) - batch + 1, batch)]
    feeds = [{PIXEL_VALUES: values} for values in batches]
    if text_embeds is not None:
        for entry in feeds:
            entry[TEXT_EMBEDS] = text_embeds
    return feeds
