"""The export's LLM on a vLLM engine, fed the vision graph's pruned embeddings: the engine's options (vLLM's own,
passed through), the prompt side the Pipeline tokenizes with, and a request as vLLM takes it. Serving venv only."""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vtp_export.errors import UsageError
from vtp_export.models.base import VisionLanguageModel
from vtp_export.onnx.names import CONFIG_JSON, TOKEN_INDEX
from vtp_export.records.codec import sha256
from vtp_export.records.export import ExportRecord, VllmFolder
from vtp_export.runtime.llm.protocol import Segment
from vtp_export.serve.served import SERVED_MODELS


@dataclass
class EngineOptions:
    """vLLM's engine arguments that vtp-export serve passes through (AsyncEngineArgs fields)."""

    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    kv_cache_memory_bytes: int | None = None
    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    dtype: str = "auto"
    enforce_eager: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # --engine-arg KEY=VALUE (JSON values)


def check_vllm_folder(folder: Path, vllm: VllmFolder) -> Path:
    """The recorded vLLM folder, every file present with its recorded sha256 (UsageError otherwise)."""
    root = folder / vllm.folder
    for name, digest in vllm.files.items():
        path = root / name
        if not path.is_file():
            raise UsageError(f"{folder} lacks {vllm.folder}/{name}, which its config.json lists: write it again "
                             f"(vtp-export llm {folder} --format vllm)")
        if sha256(path) != digest:
            raise UsageError(f"{path} does not match the sha256 its config.json records: the file was changed after "
                             f"it was written; write it again (vtp-export llm {folder} --format vllm)")
    return root


def engine_args(root: Path, name: str, options: EngineOptions) -> Any:
    """AsyncEngineArgs for the LLM folder `root`: image embeddings only (no vision tower: limit 0 per modality)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    given = {key: value for key, value in (
        ("max_model_len", options.max_model_len), ("kv_cache_memory_bytes", options.kv_cache_memory_bytes),
        ("gpu_memory_utilization", options.gpu_memory_utilization), ("max_num_seqs", options.max_num_seqs),
    ) if value is not None}
    settings = dict(model=str(root), tokenizer=str(root), served_model_name=[name], dtype=options.dtype,
                    tensor_parallel_size=options.tensor_parallel_size,
                    pipeline_parallel_size=options.pipeline_parallel_size,
                    data_parallel_size=options.data_parallel_size, enforce_eager=options.enforce_eager,
                    limit_mm_per_prompt={"image": 0, "video": 0}, enable_mm_embeds=True, **given)
    unknown = set(options.extra) - set(AsyncEngineArgs.__dataclass_fields__)
    if unknown:
        raise UsageError(f"--engine-arg {min(unknown)}: not an argument of vLLM's engine (AsyncEngineArgs)")
    return AsyncEngineArgs(**(settings | options.extra))


def check_cpu_attention(root: Path) -> None:
    """vLLM's CPU attention runs a few head sizes; an LLM with another would kill the engine at its first request."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    text = json.loads((root / CONFIG_JSON).read_text())["text_config"]
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    supported = CPUAttentionBackend.get_supported_head_sizes()
    if head_dim not in supported:
        raise UsageError(f"the LLM's attention heads are {head_dim} wide; vLLM's CPU attention runs "
                         f"{', '.join(map(str, supported))}")


class PromptSide:
    """What the Pipeline asks of its LLM to lay out a prompt (tokenize, the image placeholder's id): the tokenizer
    of the vLLM folder; the engine does the rest."""

    name = "vllm"

    def __init__(self, root: Path, record: ExportRecord, config: Any, context_length: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(root)
        self.source = record.vllm.source
        self.context_length = context_length
        self.hidden_size, self.vocab_size = record.vllm.n_embd, record.vllm.n_vocab
        self.num_layers = record.vllm.n_layer
        self.eos_token_id = self.tokenizer.eos_token_id
        self.image_token_id = config.image_token_id

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def close(self) -> None:
        pass


@dataclass
class EngineInput:
    """One request as vLLM takes it: token ids with one placeholder per image, and the images' embeddings."""

    prompt: dict[str, Any]  # vLLM's TokensPrompt
    prompt_tokens: int  # after vLLM expands each placeholder to the image's tokens
    image_tokens: list[int]


def engine_input(model: VisionLanguageModel, segments: list[Segment], vision: dict[str, np.ndarray],
                 rows: range, image_token_id: int, grid_thw: tuple[int, int, int] | None) -> EngineInput:
    """The Pipeline's segments of one prompt as a vLLM prompt. Stock LLaVA models take a (K, D) tensor per image
    and expand its placeholder to K tokens; the Qwen plugin takes the embeddings with each image's grid (grid_thw:
    the unpruned image's patch grid) and token_index (serve/vllm_plugin.py), and places the kept tokens by them.
    A DeepStack model's (Qwen3-VL) rows are (K, D * (1 + L)): each token's embedding, then its L levels."""
    import torch

    ids: list[int] = []
    embeds = []
    for segment in segments:
        if segment.token_ids is not None:
            ids += segment.token_ids.tolist()
        else:
            ids.append(image_token_id)
            image = segment.embeds
            if segment.deepstack is not None:
                image = np.concatenate([segment.embeds, *segment.deepstack], axis=-1)
            embeds.append(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)))
    image_tokens = [len(e) for e in embeds]
    prompt_tokens = len(ids) - len(embeds) + sum(image_tokens)
    if not embeds:
        return EngineInput({"prompt_token_ids": ids}, prompt_tokens, image_tokens)
    if not SERVED_MODELS[model.model_type].plugin:
        return EngineInput({"prompt_token_ids": ids, "multi_modal_data": {"image": embeds}}, prompt_tokens,
                           image_tokens)
    from vtp_export.serve.vllm_plugin import qwen_image_data

    token_index = [vision[TOKEN_INDEX][row, :count] for row, count in zip(rows, image_tokens)]
    data = qwen_image_data(embeds, token_index, grid_thw)
    return EngineInput({"prompt_token_ids": ids, "multi_modal_data": {"image": data}}, prompt_tokens, image_tokens)
