"""Tiny LLMs, tokenizer folders and the tie rule for the GGUF export's and the llama.cpp backend's tests."""

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from vtp_export.models import MODELS
from vtp_export.runtime.llm.protocol import Segment
from vtp_export.runtime.llm.transformers import TransformersLanguageModel, deepstack_inputs

TINY = MODELS.get("llava15-tiny")
WORDS = ("the a picture of cat dog sits on red blue green table chair what is in image describe color many two "
         "three people street car tree sky house window").split()
# Largest |logit difference| from transformers measured on the tests' prompts: f32 2.4e-6 (a reference run:
# f32 KV cache, no flash attention), f16 9.4e-3 (f16 weights and KV cache, flash attention).
LOGIT_ERROR = {"f32": 1e-5, "f16": 1e-2}


def tiny_llm(seed: int = 0, initializer_range: float = 0.02, **text_config) -> TransformersLanguageModel:
    """llava15-tiny's random LLM (text_config overrides its sizes); a larger initializer_range than LLaMA's
    0.02 makes attention sharp enough that positions (and so the rope layout) move the logits visibly."""
    config = TINY.default_config()
    config.text_config.initializer_range = initializer_range
    for key, value in text_config.items():
        setattr(config.text_config, key, value)
    return TransformersLanguageModel.random(TINY, config, seed)


def stand_in_tokenizer_folder(folder: Path) -> Path:
    TINY.stand_in_tokenizer(TINY.default_config()).save_pretrained(folder)
    return folder


def sentencepiece_tokenizer_folder(folder: Path) -> Path:
    """A LLaMA-style SentencePiece BPE (byte fallback, dummy prefix, digits split) trained here on a few
    thousand made-up sentences, as an HF tokenizer folder with tokenizer.model and <image> added."""
    spm = pytest.importorskip("sentencepiece")
    from transformers import AutoTokenizer

    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + rng.choice(".?! ")
             for _ in range(2000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=True,
        split_digits=True, add_dummy_prefix=True, normalization_rule_name="identity", unk_id=0, bos_id=1,
        eos_id=2, pad_id=-1, allow_whitespace_only_pieces=True, remove_extra_whitespaces=False, minloglevel=2)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": True}))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([TINY.image_token], special_tokens=True)
    tokenizer.save_pretrained(folder)
    return folder


def transformers_logits(llm: TransformersLanguageModel, segments: list[Segment], ids: list[int]) -> np.ndarray:
    """(len(ids), vocab) logits of transformers for each id's step, given the prompt and the ids before it
    (positions one per token or M-RoPE's (3, T), each new token one past the last on every plane; a DeepStack
    model's levels at its image tokens)."""
    embeds, positions = llm.sequence(segments)
    length = len(embeds)
    with torch.no_grad():
        embeds = torch.cat([embeds, llm.embed(torch.tensor(ids[:-1], dtype=torch.long))])
        positions = torch.cat([positions, positions[..., -1:] + torch.arange(1, len(ids))], dim=-1)
        deepstack = deepstack_inputs([segments], length, llm.device, llm.dtype)
        if deepstack:
            deepstack["visual_pos_masks"] = torch.cat([deepstack["visual_pos_masks"],
                                                       torch.zeros(1, len(ids) - 1, dtype=torch.bool)], dim=1)
        hidden = llm.decoder(inputs_embeds=embeds[None], position_ids=positions.unsqueeze(-2),
                             **deepstack).last_hidden_state
        return llm.head(hidden[0, -len(ids):]).numpy()


def assert_transformers_choices(llm: TransformersLanguageModel, segments: list[Segment], ids: list[int],
                                quant: str, expected: list[int] | None = None) -> None:
    """The tie rule. f32: the ids are transformers' greedy ids (`expected`, else generated here), and no step
    has top two logits within twice the error, so that the equality is no accident of rounding. f16, whose
    error does flip near-ties of these flat random models: given the same history, each id is transformers'
    argmax or within twice the error of its max."""
    if quant == "f32":
        expected = expected if expected is not None else llm.generate([segments], len(ids)).token_ids[0]
        assert ids == expected
        top_two = np.sort(transformers_logits(llm, segments, expected), axis=1)[:, -2:]
        assert np.min(top_two[:, 1] - top_two[:, 0]) > 2 * LOGIT_ERROR[quant]
    else:
        logits = transformers_logits(llm, segments, ids)
        assert np.all(logits.max(axis=1) - logits[np.arange(len(ids)), ids] <= 2 * LOGIT_ERROR[quant])
