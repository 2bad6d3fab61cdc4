"""What the runtime asks of an LLM backend (transformers, llama.cpp): a prompt as ordered segments of text
tokens and image embeddings, each at its position ids, decoded greedily or by sampling with a KV cache.
Torch-free: the device path (vision engine + llama.cpp) runs without PyTorch."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from vtp_export.errors import PipelineError
from vtp_export.records.export import ExportRecord

OnToken = Callable[[int, int], None]  # (request index, token id), called as each token is generated
# sequential: positions 0..T-1 over the pruned sequence (what LLaVA does); original: image tokens keep the
# position of their source patch and the text after the image continues as if all its tokens were there
# (FastV / TensorRT Edge-LLM style). See VisionLanguageModel.image_positions.
POSITION_POLICIES = ("sequential", "original")


@dataclass
class Segment:
    """One piece of a prompt, in order: text tokens or image embeddings, with their position ids; image embeddings
    of a DeepStack model (Qwen3-VL) carry their levels, which the LLM adds to its hidden states at these tokens
    after its first decoder layers (transformers Qwen3VLTextModel: level i after layer i)."""

    positions: np.ndarray  # (T,) int64; (3, T) for M-RoPE models
    token_ids: np.ndarray | None = None  # (T,) int64 text tokens, or
    embeds: np.ndarray | None = None  # (T, D) float32 image embeddings
    deepstack: np.ndarray | None = None  # (L, T, D) float32: the image embeddings' DeepStack levels, if any

    def __len__(self) -> int:
        return self.positions.shape[-1]


@dataclass
class Generated:
    token_ids: list[list[int]]  # per request, the new tokens (EOS included where it stopped)
    prompt_tokens: list[int]  # per request, the prompt's length in tokens
    time_to_first_token_s: float
    decode_tokens_per_s: float | None  # per request, after the first token; None for one-token answers


@dataclass(frozen=True)
class LlmRequest:
    """What a backend module's open_llm(request) builds its LanguageModelBackend from (runtime/llm/backends.py)."""

    folder: Path  # the export folder
    record: ExportRecord
    config: Any  # the model's HF config, as the export folder carries it (runtime_config)
    llm: str | Path | None  # the weights to run; None: the export's own
    llm_layers: int | None  # a random LLM cut to this many decoder layers
    device: str
    dtype: str


class LanguageModelBackend(Protocol):
    name: str
    source: str  # where the weights came from
    context_length: int
    hidden_size: int
    vocab_size: int
    num_layers: int
    eos_token_id: int | None
    image_token_id: int

    def tokenize(self, text: str) -> list[int]:
        """The whole prompt to ids, the image placeholder as its special id, BOS as the model adds it."""

    def decode(self, ids: list[int]) -> str: ...

    def mean_input_embedding(self, ids: list[int]) -> np.ndarray:
        """(D,) float32 mean of the LLM's input embeddings of `ids` (prompt-conditioned methods' text_embeds)."""

    def generate(self, requests: list[list[Segment]], max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
                 on_token: OnToken | None = None) -> Generated: ...

    def close(self) -> None: ...


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def decoder_parameters(text_config, layers: int | None = None) -> int:
    """Parameters of a LLaMA-style decoder + LM head: embeddings, attention, gated MLP, norms."""
    width, vocab = text_config.hidden_size, text_config.vocab_size
    heads = text_config.num_attention_heads
    kv_heads = getattr(text_config, "num_key_value_heads", None) or heads
    head_dim = getattr(text_config, "head_dim", None) or width // heads
    attention = width * head_dim * (2 * heads + 2 * kv_heads)
    mlp = 3 * width * text_config.intermediate_size
    per_layer = attention + mlp + 2 * width
    tied = getattr(text_config, "tie_word_embeddings", False)
    return vocab * width * (1 if tied else 2) + (layers or text_config.num_hidden_layers) * per_layer + width


def check_fits_memory(text_config, bytes_per_parameter: int, layers: int | None, what: str, way_out: str) -> None:
    """PipelineError, before anything is allocated, where the LLM's weights alone exceed the available memory."""
    needed = decoder_parameters(text_config, layers) * bytes_per_parameter
    available = available_memory_bytes()
    if available is not None and needed > 0.9 * available:
        raise PipelineError(f"{what} needs about {needed / 2**30:.1f} GiB for its weights, this machine has "
                            f"{available / 2**30:.1f} GiB available: {way_out}")
