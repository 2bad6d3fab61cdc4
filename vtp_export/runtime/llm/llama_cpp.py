"""The LLM on llama.cpp, through llama-cpp-python's low-level API: a GGUF written by `vtp-export llm`, fed text
tokens and image embeddings segment by segment, greedy or sampled, streaming. Imports neither torch nor
transformers, so a device needs only llama.cpp, numpy and the vision backend.

Several requests share one context as separate sequences (seq ids) in its KV cache: each prompt is prefilled
on its own, then every step decodes one token of every unfinished request in one batch. Requests that do
not fit the context together (cells or sequences) run in rounds, one round after another.

Position ids: llama.cpp requires a LLaMA model's positions to be consecutive (it refuses a batch that starts
anywhere but one past the sequence's last cached position, or that has gaps), so on LLaMA this backend runs the
runtime's `sequential` policy only. The Qwen architectures (qwen2vl, qwen3vl) take M-RoPE positions: text tokens
one position (llama.cpp repeats it on three planes), image embeddings four planes each (t, h, w, t), so the
kept tokens sit at their original (t, h, w). On qwen3vl (interleaved M-RoPE) text goes in as embeddings too:
llama.cpp gives text 0 on the fourth plane, which rotates the last pairs there, where HF rotates them by t.
(Its qwen2vl normalises without the RMSNorm epsilon, which its loader never reads: README, LLM on llama.cpp.)
llama.cpp masks an image's tokens by (t, h, w) order instead of their order in the sequence; that is the
sequence's causal mask only where the tokens come in raster order, one per position, which is checked (HoloV's
order by attention and its padding are refused at original positions, one line naming the sequential policy and
the transformers backend). Qwen3-VL's DeepStack levels go in with the image embeddings, each row the main
embedding and then each level's (llama.cpp's qwen3vl adds level i after decoder layer i).
Layers go to the GPU where llama-cpp-python was built with one (llama.cpp's default: all of them), else
everything runs on the CPU.
"""

import contextlib
import ctypes
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vtp_export.errors import PipelineError
from vtp_export.models import MODELS
from vtp_export.onnx.names import DEEPSTACK_EMBEDS
from vtp_export.records.codec import sha256
from vtp_export.runtime.llm.protocol import Generated, LlmRequest, OnToken, Segment

LOG_LEVEL_ERROR = 3  # ggml_log_level
LOG_LEVEL_CONT = 5  # continues the previous message
MAX_BATCH = 2048  # tokens per llama_decode call; longer segments go in several
ARCHITECTURES = ("llama", "qwen2vl", "qwen3vl")  # what `vtp-export llm` writes (gguf.GGUF_ARCHITECTURES)
MROPE_PLANES = 4  # positions per image embedding on llama.cpp's M-RoPE architectures (GGML_MROPE_SECTIONS)
CONSECUTIVE = "llama.cpp needs consecutive positions on LLaMA models (position_ids='sequential')"


class LlamaLog:
    """llama.cpp's log, kept instead of printed, so that a failure is one line of ours with its last error."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.level = 0

    def record(self, level: int, text: bytes) -> None:
        if level != LOG_LEVEL_CONT:
            self.level = level
        if self.level == LOG_LEVEL_ERROR:
            message = text.decode("utf-8", "replace")
            if level == LOG_LEVEL_CONT and self.errors:
                self.errors[-1] += message
            else:
                self.errors.append(message)

    def last_error(self) -> str:
        """The last error's first line, without llama.cpp's function-name prefix."""
        for message in reversed(self.errors):
            if message.strip():
                return re.sub(r"^\w+: ", "", message.strip().splitlines()[0])
        return ""


LOG = LlamaLog()
_log_callback = None  # the ctypes callback must outlive every llama.cpp call


def import_llama_cpp():
    """llama-cpp-python with llama.cpp's log routed into LOG (it prints to stderr otherwise)."""
    global _log_callback
    try:
        import llama_cpp
    except (ImportError, OSError) as error:
        raise PipelineError("the llama.cpp backend needs llama-cpp-python (pip install 'vtp-export[llama]'): "
                            f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if _log_callback is None:
        _log_callback = llama_cpp.llama_log_callback(lambda level, text, _: LOG.record(level, text))
        llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
    return llama_cpp


@contextlib.contextmanager
def llama_cpp_log() -> Iterator[LlamaLog]:
    """Errors logged inside the block, and only those."""
    LOG.errors.clear()
    yield LOG


class LlamaCppLanguageModel:
    """A LanguageModelBackend (runtime/llm/protocol.py) on a LLaMA-architecture GGUF."""

    name = "llama.cpp"

    def __init__(self, llama_cpp, model, context, source: str, n_seq_max: int) -> None:
        self.llama_cpp, self.model, self.context, self.source = llama_cpp, model, context, source
        self.vocab = llama_cpp.llama_model_get_vocab(model)
        self.context_length = llama_cpp.llama_n_ctx(context)
        self.hidden_size = llama_cpp.llama_model_n_embd(model)
        self.vocab_size = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.num_layers = llama_cpp.llama_model_n_layer(model)
        self.eos_token_id = llama_cpp.llama_vocab_eos(self.vocab)
        self.image_token_id = -1  # set by open_llm from the model's placeholder
        rope = llama_cpp.llama_model_rope_type(model)
        self.mrope = rope in (llama_cpp.LLAMA_ROPE_TYPE_MROPE, llama_cpp.LLAMA_ROPE_TYPE_IMROPE)
        # llama.cpp gives text tokens 0 on the fourth plane, which its interleaved M-RoPE (Qwen3-VL) rotates the last
        # pairs by where HF rotates them by t: text goes in as embeddings of the GGUF's token table, with t there
        self.text_as_embeddings = rope == llama_cpp.LLAMA_ROPE_TYPE_IMROPE
        self.deepstack_levels = llama_cpp.llama_model_n_embd_inp(model) // self.hidden_size - 1
        self.n_seq_max = n_seq_max
        self.batch_size = min(MAX_BATCH, self.context_length)
        self.token_batch = llama_cpp.llama_batch_init(self.batch_size, 0, 1)
        self.embed_batch = llama_cpp.llama_batch_init(self.batch_size, llama_cpp.llama_model_n_embd_inp(model), 1)
        # llama_batch_init gives one position per token; M-RoPE image embeddings take MROPE_PLANES, plane-major
        self.embed_positions = (llama_cpp.llama_pos * (MROPE_PLANES * self.batch_size))()
        # the address llama_batch_free frees (a pointer field read from a ctypes struct is a view of the field)
        self.embed_batch_positions = ctypes.cast(self.embed_batch.pos, ctypes.c_void_p).value
        if self.mrope:
            self.embed_batch.pos = ctypes.cast(self.embed_positions, ctypes.POINTER(llama_cpp.llama_pos))
        self.token_embeddings = None  # GGUF token_embd table, read on first use (mean_input_embedding)

    @classmethod
    def from_gguf(cls, path: str | Path, n_threads: int | None = None, n_ctx: int | None = None,
                  n_seq_max: int = 4) -> "LlamaCppLanguageModel":
        """n_ctx: KV cells shared by all sequences (default: the model's trained context; llama.cpp may round
        it up). n_seq_max: requests decoded together. An all-f32 GGUF runs as a reference (f32 KV cache, no
        flash attention); any other with llama.cpp's defaults (f16 KV cache, flash attention where it helps)."""
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"no GGUF file at {path} (write one with: vtp-export llm DIR --format gguf)")
        llama_cpp = import_llama_cpp()
        with llama_cpp_log() as log:
            model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
            if not model:
                raise PipelineError(f"llama.cpp cannot load {path}: {log.last_error() or 'not a model GGUF'}")
        architecture = model_metadata(llama_cpp, model, "general.architecture")
        if architecture not in ARCHITECTURES:
            llama_cpp.llama_model_free(model)
            raise PipelineError(f"{path} holds a {architecture!r} model; the runtime takes the LLMs that vtp-export "
                                f"llm writes ({', '.join(ARCHITECTURES)})")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx or llama_cpp.llama_model_n_ctx_train(model)
        params.n_batch = min(MAX_BATCH, params.n_ctx)
        params.n_seq_max = n_seq_max
        params.kv_unified = True  # the sequences share all n_ctx cells instead of n_ctx / n_seq_max each
        params.n_threads = params.n_threads_batch = n_threads or os.cpu_count() or 1
        if llama_cpp.llama_model_ftype(model) == llama_cpp.LLAMA_FTYPE_ALL_F32:
            # a reference run: f32 KV cache, and no flash attention, whose CPU kernel rounds through f16
            params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        with llama_cpp_log() as log:
            context = llama_cpp.llama_init_from_model(model, params)
            if not context:
                llama_cpp.llama_model_free(model)
                raise PipelineError(f"llama.cpp cannot make a context of {params.n_ctx} tokens for {path}: "
                                    f"{log.last_error() or 'out of memory?'}")
        return cls(llama_cpp, model, context, str(path), n_seq_max)

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        """llama.cpp's tokenizer; special tokens written in the text (<image>, <s>) become their ids, BOS is
        added where the model's tokenizer adds it."""
        data = text.encode()
        capacity = len(data) + 2
        while True:
            tokens = (self.llama_cpp.llama_token * capacity)()
            count = self.llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, capacity, add_bos, True)
            if count >= 0:
                return list(tokens[:count])
            capacity = -count

    def decode(self, ids: list[int]) -> str:
        """Text of the ids, special tokens left out (as skip_special_tokens does)."""
        tokens = (self.llama_cpp.llama_token * max(1, len(ids)))(*ids)
        capacity = 8 * len(ids) + 16
        while True:
            text = ctypes.create_string_buffer(capacity)
            count = self.llama_cpp.llama_detokenize(self.vocab, tokens, len(ids), text, capacity, False, False)
            if count >= 0:
                return text.raw[:count].decode("utf-8", "replace")
            capacity = -count

    def input_embeddings(self, ids: np.ndarray) -> np.ndarray:
        """(T, D) float32 rows of the GGUF's token_embd table (dequantized), as llama.cpp looks them up."""
        if self.token_embeddings is None:
            self.token_embeddings = read_token_embeddings(Path(self.source))
        table = self.token_embeddings
        rows = gguf_dequantize(table.data[np.asarray(ids, dtype=np.int64)], table.tensor_type)
        return rows.astype(np.float32, copy=False).reshape(len(ids), self.hidden_size)

    def mean_input_embedding(self, ids: list[int]) -> np.ndarray:
        """(D,) float32 mean of the LLM's input embeddings of `ids`, as the transformers backend takes the mean of its
        embed_tokens rows."""
        if not ids:
            raise PipelineError("the prompt has no text tokens to condition the pruning on")
        return self.input_embeddings(np.asarray(ids)).mean(axis=0)

    def generate(self, requests: list[list[Segment]], max_new_tokens: int, temperature: float = 0.0,
                 seed: int = 0, on_token: OnToken | None = None) -> Generated:
        """Prefill each request's segments, then decode all of them together, one token per step, until
        EOS or max_new_tokens. Greedy at temperature 0, else softmax(logits / temperature) sampled from one
        generator seeded with `seed`, requests in order at each step. Time to first token: of the first
        round (all its requests); decode tokens/s: per sequence over every round's decode steps."""
        if self.context is None:
            raise PipelineError("this llama.cpp model is closed")
        if max_new_tokens < 1:
            raise PipelineError(f"max_new_tokens={max_new_tokens} must be at least 1")
        if temperature < 0:
            raise PipelineError(f"temperature={temperature} must not be negative")
        if not requests:
            raise PipelineError("no requests to generate for")
        lengths = [self.checked_length(i, segments, max_new_tokens) for i, segments in enumerate(requests)]
        # decoding continues one past the prompt's last position (its t plane on M-RoPE: text ends every prompt)
        after = [int(next(s for s in reversed(segments) if len(s)).positions[..., -1].max()) + 1
                 for segments in requests]
        rng = np.random.default_rng(seed)
        tokens: list[list[int]] = [[] for _ in requests]
        start = time.perf_counter()
        first_token_s = None
        decode_steps, decode_s = 0, 0.0
        for round_ in self.rounds(lengths, max_new_tokens):
            self.llama_cpp.llama_memory_clear(self.llama_cpp.llama_get_memory(self.context), True)
            logits = {}
            for seq, request in enumerate(round_):
                for segment in requests[request]:
                    if len(segment):
                        logits[request] = self.prefill(seq, segment)
            next_position = {request: after[request] for request in round_}
            active = self.choose(round_, logits, tokens, temperature, rng, on_token)
            if first_token_s is None:
                first_token_s = time.perf_counter() - start
            decode_start = time.perf_counter()
            for _ in range(max_new_tokens - 1):
                if not active:
                    break
                logits = self.decode_step(round_, active, tokens, next_position)
                active = self.choose(active, logits, tokens, temperature, rng, on_token)
                decode_steps += 1
            decode_s += time.perf_counter() - decode_start
        return Generated(tokens, lengths, first_token_s,
                         decode_steps / decode_s if decode_steps > 0 and decode_s > 0 else None)

    def checked_length(self, index: int, segments: list[Segment], max_new_tokens: int) -> int:
        if not segments:
            raise PipelineError(f"request {index} has no segments")
        previous = None  # the last position so far: an int, or (t, h, w) on M-RoPE
        for segment in segments:
            if (segment.token_ids is None) == (segment.embeds is None):
                raise PipelineError(f"request {index}: a segment has to hold either token_ids or embeds")
            count = len(segment.token_ids) if segment.token_ids is not None else len(segment.embeds)
            planes = segment.positions.shape[0] if segment.positions.ndim == 2 else 0
            if (self.mrope and planes != 3) or (not self.mrope and segment.positions.ndim != 1):
                raise PipelineError(f"request {index}: positions of shape {segment.positions.shape}; this LLM takes "
                                    + ("(3, T) M-RoPE positions" if self.mrope else f"(T,) ones: {CONSECUTIVE}"))
            if count != segment.positions.shape[-1]:
                raise PipelineError(f"request {index}: a segment of {count} tokens has {segment.positions.shape[-1]} "
                                    "positions")
            if count == 0:
                continue
            self.check_inputs(index, segment)
            if self.mrope:
                previous = check_mrope_positions(index, segment, previous)
                continue
            start = 0 if previous is None else previous + 1
            expected = np.arange(start, start + count)
            if (segment.positions != expected).any():
                bad = int(np.flatnonzero(segment.positions != expected)[0])
                raise PipelineError(f"request {index}: position {int(segment.positions[bad])} where {expected[bad]} "
                                    f"comes next; {CONSECUTIVE}, from 0")
            previous = int(segment.positions[-1])
        length = sum(len(segment) for segment in segments)
        if length == 0:
            raise PipelineError(f"request {index} has no tokens")
        if length + max_new_tokens > self.context_length:
            raise PipelineError(f"prompt of {length} tokens (images included) + {max_new_tokens} new tokens exceeds "
                                f"the llama.cpp context of {self.context_length}")
        return length

    def check_inputs(self, index: int, segment: Segment) -> None:
        levels = 0 if segment.deepstack is None else segment.deepstack.shape[0]
        if segment.embeds is not None and levels != self.deepstack_levels:
            raise PipelineError(f"request {index}: image embeddings with {levels} DeepStack levels; this LLM takes "
                                f"{self.deepstack_levels}")
        if segment.embeds is not None and segment.embeds.shape[1:] != (self.hidden_size,):
            raise PipelineError(f"request {index}: image embeddings of shape {tuple(segment.embeds.shape)}; "
                                f"the LLM takes (T, {self.hidden_size})")
        if segment.token_ids is not None and not (0 <= segment.token_ids.min() and
                                                  segment.token_ids.max() < self.vocab_size):
            raise PipelineError(f"request {index}: token ids outside the vocabulary of {self.vocab_size}")

    def rounds(self, lengths: list[int], max_new_tokens: int) -> Iterator[list[int]]:
        """Requests in order, grouped so that each group fits the context's cells and sequences."""
        group, cells = [], 0
        for request, length in enumerate(lengths):
            need = length + max_new_tokens
            if group and (cells + need > self.context_length or len(group) == self.n_seq_max):
                yield group
                group, cells = [], 0
            group.append(request)
            cells += need
        yield group

    def prefill(self, seq: int, segment: Segment) -> np.ndarray:
        """Decode a segment into sequence `seq`; the logits after its last token."""
        for start in range(0, len(segment), self.batch_size):
            stop = min(start + self.batch_size, len(segment))
            positions = segment.positions[..., start:stop]
            if segment.token_ids is not None and not self.text_as_embeddings:
                self.token_batch_run(segment.token_ids[start:stop], positions[0] if self.mrope else positions,
                                     [seq] * (stop - start))
            elif segment.token_ids is not None:
                self.embed_batch_run(self.input_embeddings(segment.token_ids[start:stop]), None, positions,
                                     [seq] * (stop - start))
            else:
                levels = None if segment.deepstack is None else segment.deepstack[:, start:stop]
                self.embed_batch_run(segment.embeds[start:stop], levels, positions, [seq] * (stop - start))
        return self.logits(stop - start - 1)

    def token_batch_run(self, ids: np.ndarray, positions: np.ndarray, seqs: list[int], last_only: bool = True) -> None:
        """Decode text tokens (sequence of each in `seqs`), one position each (llama.cpp repeats it on the first three
        M-RoPE planes)."""
        fill(self.token_batch.token, ids, np.int32)
        self.set_batch(self.token_batch, positions, seqs, last_only)
        self.run_batch(self.token_batch)

    def embed_batch_run(self, embeds: np.ndarray, levels: np.ndarray | None, positions: np.ndarray, seqs: list[int],
                        last_only: bool = True) -> None:
        """Decode input embeddings (with their DeepStack levels, zero where none) at (T,) or (3, T) positions."""
        width = self.hidden_size * (1 + self.deepstack_levels)
        rows = np.zeros((len(embeds), width), dtype=np.float32)
        rows[:, :self.hidden_size] = embeds
        if levels is not None:
            rows[:, self.hidden_size:] = np.concatenate(list(levels), axis=1)
        if self.mrope:  # plane-major (t, h, w, t): llama.cpp's interleaved M-RoPE rotates the last pairs past 3 x the
            # h and w sections by the fourth plane, where HF's keeps t
            positions = np.concatenate([positions, positions[:1]]).reshape(-1)
        fill(self.embed_batch.embd, rows, np.float32)
        self.set_batch(self.embed_batch, positions, seqs, last_only)
        self.run_batch(self.embed_batch)

    def decode_step(self, round_: list[int], active: list[int], tokens: list[list[int]],
                    next_position: dict[int, int]) -> dict[int, np.ndarray]:
        """One new token for every active request, in one batch; their logits."""
        ids = np.array([tokens[request][-1] for request in active])
        positions = np.array([next_position[request] for request in active])
        seqs = [round_.index(request) for request in active]
        if self.text_as_embeddings:
            self.embed_batch_run(self.input_embeddings(ids), None, np.broadcast_to(positions, (3, len(ids))), seqs,
                                 last_only=False)
        else:
            self.token_batch_run(ids, positions, seqs, last_only=False)
        for request in active:
            next_position[request] += 1
        return {request: self.logits(i) for i, request in enumerate(active)}

    def set_batch(self, batch, positions: np.ndarray, seqs: list[int], last_only: bool) -> None:
        count = len(seqs)
        fill(batch.pos, positions, np.int32)
        fill(batch.n_seq_id, np.ones(count), np.int32)
        for i, seq in enumerate(seqs):
            batch.seq_id[i][0] = seq
        outputs = np.zeros(count) if last_only else np.ones(count)
        outputs[-1] = 1
        fill(batch.logits, outputs, np.int8)
        batch.n_tokens = count

    def run_batch(self, batch) -> None:
        with llama_cpp_log() as log:
            status = self.llama_cpp.llama_decode(self.context, batch)
        if status != 0:
            raise PipelineError(f"llama.cpp could not decode a batch of {batch.n_tokens} tokens (status {status}): "
                                f"{log.last_error() or 'no KV cache slot'}")

    def logits(self, index: int) -> np.ndarray:
        pointer = self.llama_cpp.llama_get_logits_ith(self.context, index)
        return np.ctypeslib.as_array(pointer, shape=(self.vocab_size,)).copy()

    def choose(self, requests: list[int], logits: dict[int, np.ndarray], tokens: list[list[int]],
               temperature: float, rng: np.random.Generator, on_token: OnToken | None) -> list[int]:
        """Pick each request's next token; the requests still going afterwards."""
        going = []
        for request in requests:
            token = sample(logits[request], temperature, rng)
            tokens[request].append(token)
            if on_token is not None:
                on_token(request, token)
            if token != self.eos_token_id:
                going.append(request)
        return going

    def close(self) -> None:
        if self.context is not None:
            self.llama_cpp.llama_batch_free(self.token_batch)
            self.embed_batch.pos = ctypes.cast(self.embed_batch_positions, ctypes.POINTER(self.llama_cpp.llama_pos))
            self.llama_cpp.llama_batch_free(self.embed_batch)
            self.llama_cpp.llama_free(self.context)
            self.llama_cpp.llama_model_free(self.model)
            self.context = self.model = None

    def __enter__(self) -> "LlamaCppLanguageModel":
        return self

    def __exit__(self, *_) -> None:
        self.close()


def open_llm(request: LlmRequest) -> LlamaCppLanguageModel:
    """The GGUF `request.llm`, else the export's own (`vtp-export llm`, checked against its recorded sha256),
    checked to fit the export: the image embeddings' width, the recorded vocabulary, the model's image
    placeholder as one special token. A DeepStack export is refused first."""
    folder, record, llm = request.folder, request.record, request.llm
    deepstack = next((spec.shape[1] for spec in record.graphs["vision"].outputs if spec.name == DEEPSTACK_EMBEDS), 0)
    if llm is None:
        if record.llm is None:
            raise PipelineError(f"{folder} has no GGUF of its LLM: write one with vtp-export llm {folder} --format gguf"
                                " (or pass a GGUF file as llm / --llm)")
        path = folder / record.llm.file
        if sha256(path) != record.llm.sha256:
            raise PipelineError(f"{path} does not match the sha256 its config.json records: the file was changed "
                                f"after conversion; convert again with vtp-export llm {folder} --format gguf")
    else:
        path = Path(llm)
    model = LlamaCppLanguageModel.from_gguf(path)
    try:
        width = record.model.geometry.llm_width
        if model.hidden_size != width:
            raise PipelineError(f"{path}: the LLM is {model.hidden_size} wide; the export's image embeddings are "
                                f"{width} wide")
        if record.llm is not None and model.vocab_size != record.llm.n_vocab:
            raise PipelineError(f"{path}: the LLM has {model.vocab_size} tokens; the export's GGUF (config.json) has "
                                f"{record.llm.n_vocab}")
        if model.deepstack_levels != deepstack:
            raise PipelineError(f"{path}: the LLM takes {model.deepstack_levels} DeepStack levels with its image "
                                f"embeddings; the export's vision graph gives {deepstack}")
        placeholder = MODELS.get(record.model.name).image_pad_token
        ids = model.tokenize(placeholder, add_bos=False)
        if len(ids) != 1:
            raise PipelineError(f"{path}: its tokenizer has no special token {placeholder} (it gives {len(ids)} ids); "
                                f"the LLM is not one of {record.model.name}")
        model.image_token_id = ids[0]
    except PipelineError:
        model.close()
        raise
    return model


def check_mrope_positions(index: int, segment: Segment, previous: tuple[int, ...] | None) -> tuple[int, ...]:
    """PipelineError unless llama.cpp's M-RoPE mask, which orders tokens by (t, h, w) position rather than by their
    place in the sequence, is the sequence's causal mask: every position after the one before it in (t, h, w)
    order (an image's tokens in raster order, none sharing a position), and text tokens each at a new t, as
    llama.cpp requires. The segment's last position."""
    triples = [tuple(int(v) for v in column) for column in segment.positions.T]
    if previous is not None:
        triples.insert(0, previous)
    if segment.token_ids is not None and any(b[0] <= a[0] for a, b in zip(triples, triples[1:])):
        raise PipelineError(f"request {index}: text tokens need a t of their own each, after every position before "
                            "them (llama.cpp's M-RoPE)")
    if any(b <= a for a, b in zip(triples, triples[1:])):
        raise PipelineError(f"request {index}: image tokens out of raster order or sharing a position (the method's "
                            "order, or padding); llama.cpp's M-RoPE masks tokens by position, so it cannot run them at "
                            "their original positions: use position_ids='sequential' or the transformers LLM backend")
    return triples[-1]


def read_token_embeddings(path: Path):
    """The token_embd tensor of a GGUF (gguf.GGUFReader, memory-mapped)."""
    try:
        import gguf
    except ImportError:
        raise PipelineError("the prompt's mean embedding on llama.cpp reads the GGUF with the gguf package: pip "
                            "install 'vtp-export[llama]'") from None
    for tensor in gguf.GGUFReader(path).tensors:
        if tensor.name == "token_embd.weight":
            return tensor
    raise PipelineError(f"{path} has no token_embd.weight tensor")


def gguf_dequantize(data: np.ndarray, tensor_type) -> np.ndarray:
    import gguf

    return gguf.quants.dequantize(data, tensor_type)


def sample(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> int:
    """Greedy (the first of equal maxima, as torch's argmax) at temperature 0, else softmax(logits / T)."""
    if temperature == 0:
        return int(np.argmax(logits))
    scaled = logits.astype(np.float64) / temperature
    weights = np.exp(scaled - scaled.max())
    cumulative = np.cumsum(weights)
    return int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))


def fill(pointer, values: np.ndarray, dtype) -> None:
    """Copy values into a llama_batch array."""
    data = np.ascontiguousarray(values, dtype=dtype)
    ctypes.memmove(pointer, data.ctypes.data, data.nbytes)


def model_metadata(llama_cpp, model, key: str) -> str | None:
    buffer = ctypes.create_string_buffer(256)
    count = llama_cpp.llama_model_meta_val_str(model, key.encode(), buffer, len(buffer))
    return buffer.value.decode() if count >= 0 else None
