"""Images in, pixel values out: exactly the HF LLaVA-1.5 processor (CLIP: resize the shortest edge,
center crop, rescale, normalise), from PIL images, numpy arrays or file paths."""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from transformers import CLIPImageProcessorPil

from vtp_export.errors import PipelineError
from vtp_export.verify import CLIP_MEAN, CLIP_STD

ImageInput = Image.Image | np.ndarray | str | Path
# Modes that convert to RGB without losing meaning; 16-bit and float images need the caller's scaling.
CONVERTIBLE_MODES = {"RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1"}


def image_processor(image_size: int) -> CLIPImageProcessorPil:
    """llava-hf/llava-1.5-7b-hf's processor settings at this checkpoint's image size (the PIL backend, which
    is the processor's behaviour when torchvision is absent, and the original one)."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
        resample=Image.Resampling.BICUBIC, do_center_crop=True, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True,
    )


def load_image(image: ImageInput) -> Image.Image:
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise PipelineError(f"image {path} does not exist")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except (UnidentifiedImageError, OSError) as error:
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
    if min(image.size) < 1:
        raise PipelineError(f"empty image ({image.size[0]}x{image.size[1]})")
    return image.convert("RGB")


def pixel_values(images: list[ImageInput], image_size: int) -> np.ndarray:
    """(B, 3, S, S) float32, as LLaVA's processor makes them."""
    loaded = [load_image(image) for image in images]
    return image_processor(image_size)(loaded, return_tensors="np")["pixel_values"].astype(np.float32)
