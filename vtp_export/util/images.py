"""Images in: PIL images, uint8 numpy arrays or file paths, checked and converted to RGB. The model's
adapter turns them into pixel values with the HF processor's own code (models/*.py `preprocess`)."""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vtp_export.errors import PipelineError

ImageInput = Image.Image | np.ndarray | str | Path
# Modes that convert to RGB without losing meaning; 16-bit and float images need the caller's scaling.
CONVERTIBLE_MODES = {"RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1"}
# Processors resize the shortest edge to the tower's size, so a 2000x1 strip would become 672000x336
# (2.6 GB as float32) before the crop: extreme strips are refused instead.
MAX_ASPECT_RATIO = 16


def load_image(image: ImageInput) -> Image.Image:
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise PipelineError(f"image {path} does not exist")
        if not path.is_file():
            raise PipelineError(f"image {path} is a folder, not an image file")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except PermissionError:
            raise PipelineError(f"cannot read image {path}: permission denied") from None
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise PipelineError(f"image {path} cannot be read: {error}") from None
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
            raise PipelineError(f"numpy image must be uint8 HxW, HxWx1, HxWx3 or HxWx4, got {image.dtype} "
                                f"{list(image.shape)}")
        image = Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[2] == 1 else image)
    elif not isinstance(image, Image.Image):
        raise PipelineError(f"unsupported image type {type(image).__name__} (PIL image, numpy array or path)")
    if image.mode not in CONVERTIBLE_MODES:
        raise PipelineError(f"unsupported image mode {image.mode!r}: convert it to 8-bit RGB first")
    width, height = image.size
    if min(width, height) < 1:
        raise PipelineError(f"empty image ({width}x{height})")
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise PipelineError(f"image of {width}x{height} pixels: aspect ratios beyond {MAX_ASPECT_RATIO}:1 are "
                            "refused (resizing its short side to the model's size would take gigabytes); crop it first")
    return image.convert("RGB")
