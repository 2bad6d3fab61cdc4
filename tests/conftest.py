import os
from pathlib import Path

import pytest
import torch
from transformers import CLIPModel, LlavaForConditionalGeneration

from vtp_export.models import MODELS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(min(2, os.cpu_count() or 1))

TINY = MODELS.get("llava15-tiny")


def save_tiny_llava(folder: Path, image_size: int = 336, seed: int = 0) -> Path:
    """A real HF LLaVA checkpoint (random weights, byte-level tokenizer) written with save_pretrained."""
    torch.manual_seed(seed)
    config = TINY.default_config(image_size)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    TINY.stand_in_tokenizer(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("llava15-tiny"))


@pytest.fixture(scope="session")
def tiny_checkpoint_224(tmp_path_factory) -> Path:
    return save_tiny_llava(tmp_path_factory.mktemp("llava15-tiny-224"), image_size=224)


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A real HF CLIP checkpoint (random weights) of llava15-tiny's vision tower, with its text tower."""
    from vtp_export.runtime.tokenizer import stand_in_clip_tokenizer

    torch.manual_seed(seed)
    config = TINY.default_clip_config()
    CLIPModel(config).save_pretrained(folder)
    stand_in_clip_tokenizer(config.text_config.vocab_size).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("clip-tiny"))


NEXT = MODELS.get("llava-next-tiny")


def save_tiny_llava_next(folder: Path, text: str = "llama", seed: int = 0) -> Path:
    """A real HF LLaVA-NeXT checkpoint (random weights, byte-level tokenizer), Vicuna (llama) or Mistral text."""
    from transformers import LlavaNextForConditionalGeneration

    from transformers import MistralConfig

    from vtp_export.models.llava15 import tiny_llama_text

    torch.manual_seed(seed)
    config = NEXT.default_config()
    if text == "mistral":
        settings = tiny_llama_text() | {"num_key_value_heads": 2, "sliding_window": None}
        config.text_config = MistralConfig(**{k: v for k, v in settings.items() if k != "model_type"})
    LlavaNextForConditionalGeneration(config).save_pretrained(folder)
    NEXT.stand_in_tokenizer(config).save_pretrained(folder)
    return folder


QWEN_TINY = MODELS.get("qwen2.5-vl-tiny")


def save_tiny_qwen(folder: Path, seed: int = 0) -> Path:
    """A real HF Qwen2.5-VL checkpoint (random weights, byte-level tokenizer) written with save_pretrained. Weights
    are drawn wider than HF's initialisation and norm weights away from one, so that a wrong norm, order, pairing
    or position cannot hide behind near-uniform attention: swapping the h and w positions of the image tokens
    changes the greedy answer."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = QWEN_TINY.default_config()
    model = Qwen2_5_VLForConditionalGeneration(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1 and name.endswith("weight"):
                parameter.copy_(1.0 + 0.1 * torch.randn_like(parameter))
            elif "visual" in name:
                parameter.normal_(0, 0.1)
            elif "embed_tokens" not in name:
                parameter.normal_(0, 0.2)
    model.save_pretrained(folder)
    QWEN_TINY.stand_in_tokenizer(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_next_checkpoint(tmp_path_factory, tiny_clip) -> Path:
    """A tiny LLaVA-NeXT checkpoint with its CLIP model in clip/ (text-conditioned methods export from it)."""
    import shutil

    folder = save_tiny_llava_next(tmp_path_factory.mktemp("llava-next-tiny") / "llava")
    shutil.copytree(tiny_clip, folder / "clip")
    return folder


@pytest.fixture(scope="session")
def qwen_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_qwen(tmp_path_factory.mktemp("qwen2.5-vl-tiny"))
