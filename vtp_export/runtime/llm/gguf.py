"""An export's language model as a GGUF file for llama.cpp: the decoder and LM head of the transformers backend (the
checkpoint's, or the seeded random weights of a random-weight export) with its tokenizer, as llama.cpp's own
architecture for the HF text model (GGUF_ARCHITECTURES: LLaMA, Qwen2.5-VL's qwen2vl, Qwen3-VL's qwen3vl), its
tensors named by gguf's tensor-name table. f32 and f16 are written by gguf's writer; q8_0 and q4_k_m by llama.cpp's
own quantizer from an f16 file. Files appear whole or not at all; the export's config.json records the file
(ExportRecord.llm)."""

import contextlib
import ctypes
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

try:
    import gguf
except ImportError:  # the [llama] extra; the rest of vtp-export runs without it
    gguf = None

from vtp_export.contract import WeightsFolder
from vtp_export.errors import ExportError, UsageError, VtpError, WeightsError
from vtp_export.models import MODELS
from vtp_export.models.qwen3_vl import deepstack_level_count
from vtp_export.records.codec import sha256
from vtp_export.records.export import LlmFile, read_export, runtime_config, update_export
from vtp_export.runtime.llm.transformers import TransformersLanguageModel, converted_llm
from vtp_export.util.files import current_umask
from vtp_export.util.quiet import quiet

QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
# The source of a random-weight byte-level tokenizer has no merges, but llama.cpp requires the merges key of
# a BPE vocabulary and gguf's writer cannot write an empty array: one merge of two multi-character filler
# symbols stands in. BPE merges adjacent symbols, which start as single characters, so it never applies.
INERT_MERGE = "<extra_inert_a> <extra_inert_b>"


@dataclass
class Vocab:
    model: str
    pre: str | None
    tokens: list[bytes]
    scores: list[float] | None
    types: list[int]
    merges: list[str]


@dataclass(frozen=True)
class GgufArchitecture:
    """How llama.cpp runs one HF text model type."""

    name: str  # llama.cpp's architecture, a value of gguf.MODEL_ARCH_NAMES
    # llama.cpp's NORM rope rotates adjacent pairs where HF rotates half against half: q/k rows are reordered
    # (rope_interleaved). Its NEOX and M-RoPE kinds rotate as HF does.
    pair_rope: bool = False
    mrope: bool = False  # M-RoPE: the text config's mrope_section becomes the rope dimension sections
    deepstack: bool = False  # DeepStack levels arrive in the input embedding, after the main one (n_deepstack_layers)


GGUF_ARCHITECTURES = {  # HF text model type -> the architecture llama.cpp runs it as
    "llama": GgufArchitecture("llama", pair_rope=True),
    "mistral": GgufArchitecture("llama", pair_rope=True),
    "qwen2_5_vl_text": GgufArchitecture("qwen2vl", mrope=True),
    "qwen3_vl_text": GgufArchitecture("qwen3vl", mrope=True, deepstack=True),
}


def gguf_architecture(text_config) -> GgufArchitecture:
    """The architecture of `text_config`'s model type; WeightsError for one llama.cpp is not given here."""
    architecture = GGUF_ARCHITECTURES.get(text_config.model_type)
    if architecture is None:
        raise WeightsError(f"vtp-export llm writes GGUFs of {', '.join(GGUF_ARCHITECTURES)} text models; this LLM is "
                           f"{text_config.model_type!r}: run it with the transformers backend")
    return architecture


def model_arch(architecture: GgufArchitecture):
    """gguf.MODEL_ARCH member of the architecture's name."""
    return next(arch for arch, name in gguf.MODEL_ARCH_NAMES.items() if name == architecture.name)


def gguf_file_name(quant: str) -> str:
    return f"llm-{quant}.gguf"


def export_llm(folder: Path, quant: str = "f16", llm_folder: Path | None = None,
               llm_layers: int | None = None) -> LlmFile:
    """Convert the LLM of export folder `folder` (its checkpoint's, or `llm_folder`'s; seeded random weights cut
    to `llm_layers` for a random-weight export) to folder/llm-<quant>.gguf and record it in its config.json,
    in place of any GGUF recorded before."""
    if quant not in QUANTS:
        raise UsageError(f"quant {quant!r} is not one of {', '.join(QUANTS)}")
    if llm_layers is not None and llm_layers < 1:
        raise UsageError(f"--llm-layers {llm_layers} must be at least 1")
    record = read_export(folder)
    model = MODELS.get(record.model.name)
    try:
        config = runtime_config(folder, model)
    except VtpError as error:
        raise UsageError(str(error)) from None
    try:
        gguf_architecture(config.text_config)
    except WeightsError as error:
        raise UsageError(f"{model.name}: {error}") from None
    # random weights stay float32 (the writer rounds them); a checkpoint loads in the file's precision
    random = llm_folder is None and not isinstance(record.model.weights, WeightsFolder)
    llm, tokenizer_folder = converted_llm(folder, record, config, llm_folder, llm_layers,
                                          "float32" if quant == "f32" or random else "float16")
    written = write_gguf(llm, tokenizer_folder, folder / gguf_file_name(quant), quant,
                         deepstack_level_count(config))
    update_export(folder, {("llm",): written})
    if record.llm is not None and record.llm.file != written.file:
        (folder / record.llm.file).unlink(missing_ok=True)  # the folder holds what its record lists
    return written


def write_gguf(llm: TransformersLanguageModel, tokenizer_folder: Path, out: Path, quant: str = "f16",
               deepstack_levels: int = 0) -> LlmFile:
    """Write `llm` with the tokenizer files of `tokenizer_folder` to `out` (a temp file renamed into place);
    `deepstack_levels`: the DeepStack levels its image embeddings carry (Qwen3-VL: the vision config's
    deepstack_visual_indexes)."""
    if quant not in QUANTS:
        raise UsageError(f"quant {quant!r} is not one of {', '.join(QUANTS)}")
    if gguf is None:
        raise ExportError("the GGUF export needs the gguf package: pip install 'vtp-export[llama]'")
    config = llm.config
    architecture = gguf_architecture(config)
    if deepstack_levels and not architecture.deepstack:
        raise WeightsError(f"llama.cpp's {architecture.name} takes no DeepStack levels")
    if deepstack_levels >= config.num_hidden_layers:
        raise UsageError(f"the LLM has {config.num_hidden_layers} decoder layers for {deepstack_levels} DeepStack "
                         "levels; llama.cpp adds level i after layer i and needs a layer after the last level")
    vocab = read_vocab(tokenizer_folder, llm.tokenizer, config.vocab_size)
    with staged_file(out) as stage:
        if quant in ("f32", "f16"):
            write_weights(llm, architecture, deepstack_levels, vocab, tokenizer_folder, stage, quant)
        else:
            f16 = stage.with_name(stage.name + ".f16")
            try:
                write_weights(llm, architecture, deepstack_levels, vocab, tokenizer_folder, f16, "f16")
                quantize(f16, stage, quant)
            finally:
                f16.unlink(missing_ok=True)
    return LlmFile(out.name, quant, sha256(out), out.stat().st_size, config.vocab_size, config.hidden_size,
                    config.num_hidden_layers, vocab.model, llm.source)


def write_weights(llm: TransformersLanguageModel, architecture: GgufArchitecture, deepstack_levels: int, vocab: Vocab,
                  tokenizer_folder: Path, path: Path, quant: str) -> None:
    config = llm.config
    writer = gguf.GGUFWriter(path, architecture.name)
    try:
        writer.add_name(Path(llm.source).name if not llm.source.startswith("random(") else llm.source)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads)
        writer.add_key_length(head_dim(config))
        writer.add_value_length(head_dim(config))
        writer.add_rope_dimension_count(head_dim(config))
        writer.add_rope_freq_base(float(rope_theta(config)))
        if architecture.mrope:
            writer.add_rope_dimension_sections(mrope_sections(config))
        if architecture.deepstack:
            writer.add_num_deepstack_layers(deepstack_levels)
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_vocab_size(config.vocab_size)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if quant == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        add_vocab(writer, vocab, tokenizer_folder, config.vocab_size)
        tensors = list(named_tensors(llm, architecture))
        for name, tensor in tensors:
            dtype = np.float32 if quant == "f32" or tensor.ndim == 1 else np.float16
            nbytes = tensor.numel() * np.dtype(dtype).itemsize
            writer.add_tensor_info(name, tuple(tensor.shape), np.dtype(dtype), nbytes)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, tensor in tensors:  # one tensor converted at a time: memory stays at the model's own
            dtype = np.float32 if quant == "f32" or tensor.ndim == 1 else np.float16
            writer.write_tensor_data(tensor_array(name, tensor, config, architecture).astype(dtype, copy=False))
    finally:
        writer.close()


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rope_parameters(config) -> dict:
    return getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}


def rope_theta(config) -> float:
    parameters = rope_parameters(config)
    if parameters.get("rope_type", "default") != "default":
        raise WeightsError(f"rope scaling {parameters['rope_type']!r} is not supported by the GGUF export")
    return parameters.get("rope_theta", getattr(config, "rope_theta", 10000.0))


def mrope_sections(config) -> list[int]:
    """The M-RoPE sections (t, h, w) padded to llama.cpp's four."""
    sections = list(rope_parameters(config).get("mrope_section") or ())
    if not 1 <= len(sections) <= 4:
        raise WeightsError(f"the LLM's rope parameters have no M-RoPE sections (mrope_section: {sections})")
    return sections + [0] * (4 - len(sections))


def named_tensors(llm: TransformersLanguageModel, architecture: GgufArchitecture) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, tensor) of the decoder and head, in HF order."""
    names = gguf.get_tensor_name_map(model_arch(architecture), llm.config.num_hidden_layers)
    state = {f"model.{key}": value for key, value in llm.decoder.state_dict().items()}
    state["lm_head.weight"] = llm.head.weight
    for hf_name, tensor in state.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise WeightsError(f"the LLM has a tensor {hf_name} that a {architecture.name} GGUF has no place for")
        yield name, tensor.detach()


def tensor_array(name: str, tensor: torch.Tensor, config, architecture: GgufArchitecture) -> np.ndarray:
    array = tensor.float().cpu().numpy() if tensor.dtype == torch.bfloat16 else tensor.cpu().numpy()
    if not architecture.pair_rope:
        return array
    if name.endswith("attn_q.weight"):
        return rope_interleaved(array, config.num_attention_heads)
    if name.endswith("attn_k.weight"):
        return rope_interleaved(array, config.num_key_value_heads)
    return array


def rope_interleaved(weight: np.ndarray, heads: int) -> np.ndarray:
    """HF LLaMA rotates the two halves of each head's dimensions; llama.cpp's LLaMA rope rotates adjacent
    pairs. Reordering each head's output rows (first half and second half interleaved) makes them agree."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


def read_vocab(folder: Path, tokenizer, n_vocab: int) -> Vocab:
    """The tokenizer files of `folder` (`tokenizer` loaded) as llama.cpp takes them, padded to the LLM's
    vocabulary with unused tokens."""
    if (folder / "tokenizer.model").is_file():
        vocab = sentencepiece_vocab(folder, tokenizer)
    else:
        vocab = byte_level_vocab(folder, tokenizer)
    if len(vocab.tokens) > n_vocab:
        raise WeightsError(f"the tokenizer of {folder} has {len(vocab.tokens)} tokens, more than the LLM's "
                           f"vocabulary of {n_vocab}")
    for i in range(len(vocab.tokens), n_vocab):
        vocab.tokens.append(f"[PAD{i}]".encode())
        vocab.types.append(gguf.TokenType.UNUSED)
        if vocab.scores is not None:
            vocab.scores.append(-1000.0)
    return vocab


def sentencepiece_vocab(folder: Path, tokenizer) -> Vocab:
    """LLaMA's own tokenizer: SentencePiece pieces, scores and types, then the HF added tokens (<image>)."""
    try:
        base = gguf.vocab.SentencePieceVocab(folder)
    except RuntimeError:  # gguf's reader says so when the sentencepiece package is missing
        raise WeightsError(f"{folder} has a SentencePiece tokenizer; reading it needs the sentencepiece package: "
                           "pip install 'vtp-export[llama]'") from None
    except (ValueError, OSError) as error:
        raise WeightsError(f"cannot read {folder / 'tokenizer.model'}: {error}") from None
    tokens, scores, types = [], [], []
    for text, score, kind in base.sentencepiece_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(kind)
    special_ids = special_token_ids(tokenizer)
    for token_id, added in sorted(tokenizer.added_tokens_decoder.items()):
        if token_id < len(tokens):
            continue
        if token_id != len(tokens):
            raise WeightsError(f"added token {added.content!r} of {folder} has id {token_id}; the next free id is "
                               f"{len(tokens)}")
        tokens.append(added.content.encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.CONTROL if token_id in special_ids else gguf.TokenType.USER_DEFINED)
    return Vocab("llama", None, tokens, scores, types, [])


def byte_level_vocab(folder: Path, tokenizer) -> Vocab:
    """A GPT-2 style byte-level BPE (the stand-in tokenizer of random-weight models is one)."""
    try:
        base = gguf.vocab.BpeVocab(folder)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise WeightsError(f"the tokenizer of {folder} is neither SentencePiece (tokenizer.model) nor a "
                           f"byte-level BPE tokenizer.json: {error}") from None
    special_ids = special_token_ids(tokenizer)
    tokens, types = [], []
    for token_id, (text, _, _) in enumerate(base.all_tokens()):
        tokens.append(text.encode() if isinstance(text, str) else text)
        types.append(gguf.TokenType.CONTROL if token_id in special_ids else gguf.TokenType.NORMAL)
    with quiet(("gguf",)):  # its vocab reader warns about tokenizer.json details llama.cpp never uses
        merges = gguf.SpecialVocab(folder, load_merges=True).merges or [INERT_MERGE]
    pre = byte_level_pre(json.loads((folder / "tokenizer.json").read_text()).get("pre_tokenizer") or {})
    if pre is None:
        raise WeightsError(f"the byte-level tokenizer of {folder} splits text in a way llama.cpp does not know")
    return Vocab("gpt2", pre, tokens, None, types, merges)


# Qwen2's split (tokenizer.json of Qwen2, Qwen2.5-VL, Qwen3-VL), before its byte-level step: llama.cpp's "qwen2"
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")


def byte_level_pre(pre_tokenizer: dict) -> str | None:
    """llama.cpp's name of a byte-level tokenizer's pre-tokenizer (tokenizer.ggml.pre): GPT-2's own regex, or
    Qwen2's split followed by a byte-level step without its regex; None for any other."""
    if pre_tokenizer.get("type") == "ByteLevel" and pre_tokenizer.get("use_regex", True):
        return "gpt-2"
    steps = pre_tokenizer.get("pretokenizers") or []
    if (pre_tokenizer.get("type") == "Sequence" and len(steps) == 2 and steps[0].get("type") == "Split"
            and (steps[0].get("pattern") or {}).get("Regex") == QWEN2_SPLIT
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True)):
        return "qwen2"
    return None


def special_token_ids(tokenizer) -> set[int]:
    """Ids that llama.cpp should treat as control tokens: never produced from plain text, left out of text."""
    added = {token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}
    return added | set(tokenizer.all_special_ids)


def add_vocab(writer, vocab: Vocab, folder: Path, n_vocab: int) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre is not None:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    with quiet(("gguf",)):  # its vocab reader warns about tokenizer.json details llama.cpp never uses
        specials = gguf.SpecialVocab(folder, n_vocab=n_vocab)
    specials.merges = []  # written above
    specials.add_to_gguf(writer, quiet=True)


def quantize(source: Path, out: Path, quant: str) -> None:
    from vtp_export.runtime.llm.llama_cpp import import_llama_cpp, llama_cpp_log

    llama_cpp = import_llama_cpp()
    ftypes = {"q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M}
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftypes[quant]
    params.nthread = os.cpu_count() or 1
    with llama_cpp_log() as log:
        status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if status != 0:
        raise ExportError(f"llama.cpp could not quantize {source.name} to {quant}: {log.last_error() or status}")


@contextlib.contextmanager
def staged_file(out: Path) -> Iterator[Path]:
    """Yield a temp path beside `out`; on success it replaces `out`, on any failure it is removed."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{out.name}.partial-", dir=out.parent)
        os.close(handle)
    except OSError as error:
        raise ExportError(f"cannot write under {out.parent}: {error.strerror}") from None
    stage = Path(name)
    try:
        yield stage
        os.chmod(stage, 0o666 & ~current_umask())  # mkstemp makes it private; the result is an ordinary file
        os.replace(stage, out)
    except BaseException:
        stage.unlink(missing_ok=True)
        raise
