"""Tokenizers: the checkpoint's own where it has one; for random-weight models, a byte-level stand-in
with the same special-token layout (the text is noise then, but every id path runs)."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from vtp_export.errors import PipelineError

LLAMA_SPECIALS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2 as in LLaMA's tokenizer
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"  # the last two ids of CLIP's vocabulary


def byte_level(vocab_size: int, specials: dict[int, str], template: str) -> Tokenizer:
    """A BPE without merges over the 256 byte symbols, specials at the given ids, filler ids elsewhere."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab: dict[str, int] = {}
    symbols = iter(sorted(alphabet))
    for i in range(vocab_size):
        if i in specials:
            vocab[specials[i]] = i
        else:
            vocab[next(symbols, f"<extra_{i}>")] = i
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=specials.get(0)))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(specials.values()))
    special_ids = [(token, i) for i, token in specials.items() if f"{token}" in template]
    tokenizer.post_processor = processors.TemplateProcessing(single=template, special_tokens=special_ids)
    return tokenizer


def stand_in_llama_tokenizer(vocab_size: int, extra_specials: dict[int, str]) -> PreTrainedTokenizerFast:
    """LLaMA's special ids (<unk>, <s>, </s> = 0, 1, 2) plus the model's own (the image placeholder)."""
    specials = dict(enumerate(LLAMA_SPECIALS)) | extra_specials
    return PreTrainedTokenizerFast(tokenizer_object=byte_level(vocab_size, specials, "<s> $A"),
                                   bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def stand_in_qwen_tokenizer(vocab_size: int, specials: dict[int, str]) -> PreTrainedTokenizerFast:
    """Qwen2's layout: no BOS, <|im_end|> ends a turn, <|endoftext|> pads."""
    return PreTrainedTokenizerFast(tokenizer_object=byte_level(vocab_size, specials, "$A"),
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>")


def stand_in_clip_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    specials = {vocab_size - 2: CLIP_BOS, vocab_size - 1: CLIP_EOS}
    return PreTrainedTokenizerFast(tokenizer_object=byte_level(vocab_size, specials, f"{CLIP_BOS} $A {CLIP_EOS}"),
                                   bos_token=CLIP_BOS, eos_token=CLIP_EOS, pad_token=CLIP_EOS)


def load_tokenizer(folder: Path | None, stand_in: Callable[[], PreTrainedTokenizerBase] | None = None
                   ) -> PreTrainedTokenizerBase:
    """The folder's tokenizer, or the stand-in where the model has random weights (folder None)."""
    if folder is None:
        assert stand_in is not None
        return stand_in()
    try:
        return AutoTokenizer.from_pretrained(folder)
    except Exception as error:  # transformers raises many types for missing or broken tokenizer files
        raise PipelineError(f"no usable tokenizer in {folder}: {str(error).splitlines()[0][:200]}") from None


def clip_input_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str], length: int) -> np.ndarray:
    """(B, length) ids as CLIP's text tower takes them: BOS, text, EOS, EOS padding; truncated to fit."""
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="np")
    return encoded["input_ids"].astype(np.int64)
