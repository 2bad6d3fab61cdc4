"""The LLM side: LLaVA's language model from the checkpoint (or seeded random weights), generating from
inputs_embeds with a KV cache, greedy or sampled, streaming tokens as they come."""

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaModel, LlavaConfig, LlavaForConditionalGeneration

from vtp_export.errors import PipelineError

OnToken = Callable[[int, int], None]  # (batch item, token id), called as each token is generated


@dataclass
class Generated:
    token_ids: list[list[int]]  # per batch item, the new tokens (EOS included where it stopped)
    prompt_tokens: int  # sequence length of the prefill, padding included
    time_to_first_token_s: float
    decode_tokens_per_s: float | None  # per sequence, after the first token; None for one-token answers


class LanguageModel:
    """LLaVA's decoder and LM head. Everything it computes is in `dtype` on `device`."""

    def __init__(self, decoder: LlamaModel, head: nn.Linear, config: LlamaConfig, source: str) -> None:
        self.decoder, self.head, self.config, self.source = decoder.eval(), head.eval(), config, source

    @classmethod
    def from_checkpoint(cls, folder: Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> "LanguageModel":
        try:
            llava = LlavaForConditionalGeneration.from_pretrained(folder, dtype=dtype)
        except Exception as error:  # transformers raises many types for missing or corrupt checkpoints
            raise PipelineError(f"cannot load the LLM of {folder}: {str(error).splitlines()[0][:200]}") from None
        decoder, head = llava.model.language_model, llava.lm_head
        del llava.model.vision_tower, llava.model.multi_modal_projector  # the vision graph replaces them
        return cls(decoder.to(device), head.to(device), llava.config.text_config, str(folder))

    @classmethod
    def random(cls, config: LlavaConfig, seed: int, device: str = "cpu") -> "LanguageModel":
        torch.manual_seed(seed)
        text = config.text_config
        decoder = LlamaModel(text)
        head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        return cls(decoder.to(device), head.to(device), text, f"random(seed={seed})")

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    @property
    def context_length(self) -> int:
        return self.config.max_position_embeddings

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.decoder.embed_tokens(ids.to(self.device))

    @torch.no_grad()
    def generate(self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 max_new_tokens: int, eos_token_id: int | None, temperature: float = 0.0, seed: int = 0,
                 on_token: OnToken | None = None) -> Generated:
        """Prefill (B, T, D) embeds, then decode one token at a time from the KV cache."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        cache = DynamicCache(config=self.config)
        batch = embeds.shape[0]
        mask, positions = attention_mask.to(self.device), position_ids.to(self.device)
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        tokens: list[list[int]] = [[] for _ in range(batch)]
        start = time.perf_counter()
        hidden = self.decoder(inputs_embeds=embeds.to(self.device, self.dtype), attention_mask=mask,
                              position_ids=positions, past_key_values=cache, use_cache=True).last_hidden_state
        first_token_s = decode_start = None
        for step in range(max_new_tokens):
            logits = self.head(hidden[:, -1]).float()
            if temperature > 0:
                chosen = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)[:, 0]
            else:
                chosen = logits.argmax(dim=-1)
            if eos_token_id is not None:
                chosen = torch.where(finished, torch.full_like(chosen, eos_token_id), chosen)
            for b in range(batch):
                if not finished[b]:
                    tokens[b].append(int(chosen[b]))
                    if on_token is not None:
                        on_token(b, int(chosen[b]))
            if step == 0:
                first_token_s = time.perf_counter() - start
                decode_start = time.perf_counter()
            if eos_token_id is not None:
                finished |= chosen == eos_token_id
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            hidden = self.decoder(inputs_embeds=self.embed(chosen[:, None]).to(self.dtype), attention_mask=mask,
                                  position_ids=positions, past_key_values=cache, use_cache=True).last_hidden_state
        decoded = max(len(t) for t in tokens) - 1
        elapsed = time.perf_counter() - decode_start
        return Generated(tokens, embeds.shape[1], first_token_s,
                         decoded / elapsed if decoded > 0 and elapsed > 0 else None)
