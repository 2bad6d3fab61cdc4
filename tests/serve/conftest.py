"""Tiny checkpoints vLLM's CPU engine runs: the toy LLaVA-1.5, LLaVA-NeXT, Qwen2.5-VL and Qwen3-VL with their LLM's
attention heads 32 wide (vLLM's CPU attention runs head sizes 32 to 512; the toy models' are 16), exported with
--weights."""

from pathlib import Path

import pytest
import torch
from transformers import (
    LlavaForConditionalGeneration, LlavaNextForConditionalGeneration, Qwen3VLForConditionalGeneration,
)

from tests.conftest import save_tiny_qwen
from vtp_export.models import MODELS

LLAVA_TINY = MODELS.get("llava15-tiny")
NEXT_TINY = MODELS.get("llava-next-tiny")
QWEN_TINY = MODELS.get("qwen2.5-vl-tiny")
QWEN3_TINY = MODELS.get("qwen3-vl-tiny")


def save_llava_for_vllm(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = LLAVA_TINY.default_config(336)
    config.text_config.num_attention_heads = config.text_config.num_key_value_heads = 2
    config.text_config.head_dim = 32
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    LLAVA_TINY.stand_in_tokenizer(config).save_pretrained(folder)
    return folder


def save_llava_next_for_vllm(folder: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    config = NEXT_TINY.default_config()
    config.text_config.num_attention_heads = config.text_config.num_key_value_heads = 2
    config.text_config.head_dim = 32
    LlavaNextForConditionalGeneration(config).save_pretrained(folder)
    NEXT_TINY.stand_in_tokenizer(config).save_pretrained(folder)
    return folder


def save_qwen_for_vllm(folder: Path, seed: int = 0) -> Path:
    """As tests/conftest.py save_tiny_qwen (weights drawn wide, so that positions change answers), with 2 heads of
    32 (M-RoPE sections 8, 4, 4)."""
    config = QWEN_TINY.default_config()
    text = config.text_config
    text.num_attention_heads = text.num_key_value_heads = 2
    text.rope_parameters = text.rope_parameters | {"mrope_section": [8, 4, 4]}
    return save_tiny_qwen(folder, seed, QWEN_TINY.name, config)


def save_qwen3_for_vllm(folder: Path, seed: int = 0, deepstack_gain: float = 100.0) -> Path:
    """As tests/conftest.py save_tiny_qwen, with 2 heads of 32 (M-RoPE sections 8, 4, 4, interleaved) and the
    DeepStack mergers' output scaled by `deepstack_gain`, so that the levels decide the greedy answer (at the tiny
    checkpoint's own scale they move the logits by about 0.02: tests/runtime/test_qwen3_pipeline.py)."""
    config = QWEN3_TINY.default_config()
    text = config.text_config
    text.num_attention_heads = text.num_key_value_heads = 2
    text.head_dim = 32
    text.rope_parameters = text.rope_parameters | {"mrope_section": [8, 4, 4]}
    save_tiny_qwen(folder, seed, QWEN3_TINY.name, config)
    model = Qwen3VLForConditionalGeneration.from_pretrained(folder)
    with torch.no_grad():
        for merger in model.model.visual.deepstack_merger_list:
            merger.linear_fc2.weight.mul_(deepstack_gain)
            merger.linear_fc2.bias.mul_(deepstack_gain)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llava_vllm_checkpoint(tmp_path_factory) -> Path:
    return save_llava_for_vllm(tmp_path_factory.mktemp("llava-vllm") / "llava")


@pytest.fixture(scope="session")
def llava_next_vllm_checkpoint(tmp_path_factory) -> Path:
    return save_llava_next_for_vllm(tmp_path_factory.mktemp("llava-next-vllm") / "llava-next")


@pytest.fixture(scope="session")
def qwen_vllm_checkpoint(tmp_path_factory) -> Path:
    return save_qwen_for_vllm(tmp_path_factory.mktemp("qwen-vllm") / "qwen")


@pytest.fixture(scope="session")
def qwen3_vllm_checkpoint(tmp_path_factory) -> Path:
    return save_qwen3_for_vllm(tmp_path_factory.mktemp("qwen3-vllm") / "qwen3")
