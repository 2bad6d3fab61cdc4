"""The LLM in transformers: the checkpoint's language model (or seeded random weights), prefilled from
embeddings with a KV cache, greedy or sampled, streaming tokens as they come. A DeepStack model's text model
(Qwen3-VL: transformers Qwen3VLTextModel) gets its image tokens' levels on prefill, as visual_pos_masks and
deepstack_visual_embeds, the inputs Qwen3VLModel.forward gives it."""

import inspect
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, DynamicCache, PreTrainedTokenizerBase

from vtp_export.checkpoint.locate import read_config_json
from vtp_export.contract import Geometry, WeightsFolder
from vtp_export.errors import PipelineError, UsageError
from vtp_export.models import MODELS
from vtp_export.models.base import VisionLanguageModel
from vtp_export.records.export import RUNTIME_FOLDER, ExportRecord
from vtp_export.runtime.llm.protocol import Generated, LlmRequest, OnToken, Segment, check_fits_memory

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def with_layers(text_config: Any, layers: int | None) -> Any:
    """A copy of the text config, cut to `layers` decoder layers where given."""
    copy = text_config.__class__.from_dict(text_config.to_dict())
    if layers is not None:
        copy.num_hidden_layers = layers
    return copy


def open_llm(request: LlmRequest) -> "TransformersLanguageModel":
    """`request.llm`, else the export's checkpoint, else seeded random weights for a random-weight export."""
    record = request.record
    model = MODELS.get(record.model.name)
    weights = record.model.weights
    if request.llm is None and not isinstance(weights, WeightsFolder):
        return TransformersLanguageModel.random(model, request.config, weights.seed, request.llm_layers, request.device)
    if request.llm_layers is not None:
        raise PipelineError("--llm-layers cuts a random LLM; this export's LLM comes from a checkpoint")
    if request.llm is None and not weights.path.is_dir():
        raise PipelineError(f"{request.folder}: its LLM is the checkpoint {weights.path}, which is not on this "
                            f"machine: pass --llm FOLDER (a {model.name} checkpoint), or convert the LLM into the "
                            f"export folder (vtp-export llm {request.folder} --format gguf --llm FOLDER) and run it "
                            "with --llm-backend llama.cpp")
    return TransformersLanguageModel.from_checkpoint(model, Path(request.llm or weights.path), record.model.geometry,
                                                     request.device, request.dtype)


def converted_llm(folder: Path, record: ExportRecord, config: Any, llm_folder: Path | None, llm_layers: int | None,
                  dtype: str) -> tuple["TransformersLanguageModel", Path]:
    """The LLM a converter (`vtp-export llm`: GGUF, vLLM) writes out of export folder `folder` (its record, read and
    verified by the converter) in `dtype`: the checkpoint's (`llm_folder`, else the export's own), or the export's
    seeded random weights cut to `llm_layers`; and the folder holding its tokenizer. UsageError, one line, where
    neither is possible."""
    model = MODELS.get(record.model.name)
    weights = record.model.weights
    checkpoint = llm_folder or (weights.path if isinstance(weights, WeightsFolder) else None)
    if checkpoint is None:  # seeded random weights; the stand-in tokenizer the export folder carries
        llm = TransformersLanguageModel.random(model, config, weights.seed, llm_layers)
        llm.decoder.to(DTYPES[dtype])
        llm.head.to(DTYPES[dtype])
        return llm, folder / RUNTIME_FOLDER
    if llm_layers is not None:
        raise UsageError("--llm-layers cuts a random LLM; this export's LLM comes from a checkpoint")
    if llm_folder is None and not checkpoint.is_dir():
        raise UsageError(f"{folder}: its LLM is the checkpoint {checkpoint}, which is not on this machine: pass "
                         f"--llm FOLDER (a {model.name} checkpoint)")
    return TransformersLanguageModel.from_checkpoint(model, checkpoint, record.model.geometry, dtype=dtype), checkpoint


class TransformersLanguageModel:
    """The model's decoder and LM head in `dtype` on `device`, with its tokenizer."""

    name = "transformers"

    def __init__(self, decoder: nn.Module, head: nn.Linear, text_config: Any, tokenizer: PreTrainedTokenizerBase,
                 image_token_id: int, source: str) -> None:
        self.decoder, self.head, self.config = decoder.eval(), head.eval(), text_config
        self.tokenizer, self.image_token_id, self.source = tokenizer, image_token_id, source
        self.context_length = text_config.max_position_embeddings
        self.hidden_size, self.vocab_size = text_config.hidden_size, text_config.vocab_size
        self.num_layers = text_config.num_hidden_layers
        self.eos_token_id = tokenizer.eos_token_id
        # the KV cache argument: `cache` in recent transformers (5.24 warns that `past_key_values` goes in 5.40),
        # `past_key_values` in older ones (5.19, which vLLM's serving venv pins)
        parameters = inspect.signature(decoder.forward).parameters
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"

    @classmethod
    def from_checkpoint(cls, model: VisionLanguageModel, folder: Path, geometry: Geometry, device: str = "cpu",
                        dtype: str = "float32") -> "TransformersLanguageModel":
        """The LLM of a HF checkpoint folder of `model`'s architecture, checked against the export first."""
        import transformers

        try:
            config = model.config_from_dict(read_config_json(folder, model.model_type, model.name))
        except Exception as error:  # WeightsError for a foreign folder; transformers raises many types
            raise PipelineError(f"--llm {folder}: {str(error).splitlines()[0][:200]}") from None
        try:
            model.check_llm_config(config, geometry, str(folder))
        except Exception as error:
            raise PipelineError(str(error)) from None
        check_fits_memory(config.text_config, torch.tensor([], dtype=DTYPES[dtype]).element_size(), None,
                          f"the {dtype} LLM of {folder}", "pass dtype bfloat16 (--llm-dtype bfloat16) on a CPU, or a "
                          "machine with more memory")
        try:
            full = getattr(transformers, model.hf_class).from_pretrained(folder, dtype=DTYPES[dtype])
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except Exception as error:  # transformers raises many types for missing or corrupt checkpoints
            raise PipelineError(f"cannot load the LLM of {folder}: {str(error).splitlines()[0][:200]}") from None
        decoder, head = full.model.language_model, full.lm_head
        return cls(decoder.to(device), head.to(device), full.config.text_config, tokenizer,
                   full.config.image_token_id, str(folder))

    @classmethod
    def random(cls, model: VisionLanguageModel, config: Any, seed: int, layers: int | None = None,
               device: str = "cpu") -> "TransformersLanguageModel":
        """Seeded random weights of the checkpoint's LLM shape (cut to `layers`), with a stand-in tokenizer."""
        text = with_layers(config.text_config, layers)
        check_fits_memory(text, 4, layers, f"a random float32 LLM of width {text.hidden_size} with "
                          f"{text.num_hidden_layers} layers", "pass --llm-layers 2 (or another small number of "
                          "layers; prefill scales with layers, the ratios between keeps do not)")
        torch.manual_seed(seed)
        decoder = AutoModel.from_config(text)
        head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        tokenizer = model.stand_in_tokenizer(config)
        layers_note = f", {layers} layers" if layers is not None else ""
        return cls(decoder.to(device), head.to(device), text, tokenizer, config.image_token_id,
                   f"random(seed={seed}{layers_note})")

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(ids.to(self.device))

    @torch.no_grad()
    def mean_input_embedding(self, ids: list[int]) -> np.ndarray:
        """(D,) float32: the mean of the decoder's embed_tokens rows of `ids` (the prompt embedding of
        Signal.PROMPT_EMBEDS), averaged in float32 whatever the weights' dtype."""
        if not ids:
            raise PipelineError("the prompt has no text tokens to condition the pruning on")
        return self.embed(torch.tensor(ids)).float().mean(dim=0).cpu().numpy()

    def sequence(self, segments: list[Segment]) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, D) embeddings and (..., T) positions of one prompt."""
        pieces = [self.embed(torch.from_numpy(s.token_ids)) if s.token_ids is not None
                  else torch.from_numpy(s.embeds).to(self.device, self.dtype) for s in segments]
        positions = torch.from_numpy(np.concatenate([s.positions for s in segments], axis=-1))
        return torch.cat(pieces).to(self.dtype), positions

    @torch.no_grad()
    def generate(self, requests: list[list[Segment]], max_new_tokens: int, temperature: float = 0.0, seed: int = 0,
                 on_token: OnToken | None = None) -> Generated:
        """Prefill the prompts (left padded), then decode one token at a time from the KV cache."""
        sequences = [self.sequence(segments) for segments in requests]
        embeds, mask, positions = left_padded(sequences)
        deepstack = deepstack_inputs(requests, embeds.shape[1], self.device, self.dtype)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        cache = DynamicCache(config=self.config)
        batch = embeds.shape[0]
        mask, positions = mask.to(self.device), positions.to(self.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        tokens: list[list[int]] = [[] for _ in range(batch)]
        start = time.perf_counter()
        hidden = self.decoder(inputs_embeds=embeds.to(self.device), attention_mask=mask, position_ids=positions,
                              use_cache=True, **{self.cache_argument: cache}, **deepstack).last_hidden_state
        first_token_s = decode_start = None
        for step in range(max_new_tokens):
            logits = self.head(hidden[:, -1]).float()
            if temperature > 0:
                chosen = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)[:, 0]
            else:
                chosen = logits.argmax(dim=-1)
            if self.eos_token_id is not None:
                chosen = torch.where(finished, torch.full_like(chosen, self.eos_token_id), chosen)
            for b in range(batch):
                if not finished[b]:
                    tokens[b].append(int(chosen[b]))
                    if on_token is not None:
                        on_token(b, int(chosen[b]))
            if step == 0:
                first_token_s = time.perf_counter() - start
                decode_start = time.perf_counter()
            if self.eos_token_id is not None:
                finished |= chosen == self.eos_token_id
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[..., -1:] + 1
            step_embeds = self.embed(chosen[:, None]).to(self.dtype)
            hidden = self.decoder(inputs_embeds=step_embeds, attention_mask=mask, position_ids=positions,
                                  use_cache=True, **{self.cache_argument: cache}).last_hidden_state
        decoded = max(len(t) for t in tokens) - 1
        elapsed = time.perf_counter() - decode_start
        return Generated(tokens, [len(e) for e, _ in sequences], first_token_s,
                         decoded / elapsed if decoded > 0 and elapsed > 0 else None)

    def close(self) -> None:
        pass


def left_padded(sequences: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, D) embeds, (B, T) attention mask and (..., B, T) position ids, padded on the left."""
    length = max(len(e) for e, _ in sequences)
    first_embeds, first_positions = sequences[0]
    embeds = torch.zeros(len(sequences), length, first_embeds.shape[1], dtype=first_embeds.dtype,
                         device=first_embeds.device)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    positions = torch.zeros(*first_positions.shape[:-1], len(sequences), length, dtype=torch.long)
    for b, (e, p) in enumerate(sequences):
        embeds[b, length - len(e):] = e
        mask[b, length - len(e):] = 1
        positions[..., b, length - len(e):] = p
    return embeds, mask, positions


def deepstack_inputs(requests: list[list[Segment]], length: int, device: torch.device,
                     dtype: torch.dtype) -> dict[str, Any]:
    """The DeepStack inputs of Qwen3VLTextModel.forward for the prompts left padded to `length`: visual_pos_masks
    (B, T), True at the image tokens that carry levels, and deepstack_visual_embeds, one (V, D) tensor per level
    holding those V tokens in the mask's row-major order (the order Qwen3VLModel.forward concatenates its images'
    levels in and _deepstack_process adds them back); {} where no segment carries levels."""
    if all(segment.deepstack is None for segments in requests for segment in segments):
        return {}
    mask = torch.zeros(len(requests), length, dtype=torch.bool)
    rows = []
    for b, segments in enumerate(requests):
        cursor = length - sum(len(segment) for segment in segments)
        for segment in segments:
            if segment.deepstack is not None:
                mask[b, cursor:cursor + len(segment)] = True
                rows.append(torch.from_numpy(segment.deepstack))
            cursor += len(segment)
    levels = torch.cat(rows, dim=1).to(device, dtype)  # (L, V, D)
    return {"visual_pos_masks": mask.to(device), "deepstack_visual_embeds": list(levels)}
