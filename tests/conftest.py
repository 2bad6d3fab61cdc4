import os
from pathlib import Path

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from vtp_export.models import llava15_tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def save_tiny_llava(folder: Path, image_size: int = 336, seed: int = 0) -> Path:
    """A real HF LLaVA checkpoint (random weights) written with save_pretrained."""
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(llava15_tiny_config(image_size)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("llava15-tiny"))


@pytest.fixture(scope="session")
def tiny_checkpoint_224(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("llava15-tiny-224"), image_size=224)
