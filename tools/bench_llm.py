"""The LLM backends on this machine: llama.cpp (f16, q4_k_m GGUF) against transformers (fp32), on a random LLM of
LLaVA-1.5-7B's width (4096, 32 heads, vocabulary 32064) cut to 2 decoder layers, as `profile --llm-layers`.

Prints a table of time to first token (prefill) at prompts of 101 text tokens + 576/192/128/64 image
embeddings (the unpruned image and three keeps) and decode tokens/s at each, then the greedy agreement of
q8_0 and q4_k_m (and f16) with transformers: ids equal by position over --agree-tokens free-running tokens,
and top-1 agreement when each step is given transformers' own history.

  .venv/bin/python tools/bench_llm.py [--threads 2] [--runs 3] [--new-tokens 32] [--json figures.json]
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from vtp_export.models import MODELS  # noqa: E402
from vtp_export.runtime.llm.gguf import write_gguf  # noqa: E402
from vtp_export.runtime.llm.llama_cpp import LlamaCppLanguageModel, fill  # noqa: E402
from vtp_export.runtime.llm.protocol import Segment  # noqa: E402
from vtp_export.runtime.llm.transformers import TransformersLanguageModel  # noqa: E402

TEXT_BEFORE, TEXT_AFTER = 5, 96  # "<s>USER: " | "\n{question} ASSISTANT:" : 101 text tokens
IMAGE_TOKENS = (576, 192, 128, 64)
LAYERS = 2


def prompt(llm: TransformersLanguageModel, image_tokens: int, seed: int = 0) -> list[Segment]:
    rng = np.random.default_rng(seed)
    scale = 10 * float(llm.decoder.embed_tokens.weight.detach().pow(2).mean().sqrt())  # as the tests: 10x text RMS
    before, after = rng.integers(3, 259, TEXT_BEFORE), rng.integers(3, 259, TEXT_AFTER)
    image = (rng.standard_normal((image_tokens, llm.config.hidden_size)) * scale).astype(np.float32)
    a, b = TEXT_BEFORE, TEXT_BEFORE + image_tokens
    return [Segment(np.arange(a), token_ids=before), Segment(np.arange(a, b), embeds=image),
            Segment(np.arange(b, b + TEXT_AFTER), token_ids=after)]


class Transformers:
    """The transformers backend fed the same segments."""

    name = "transformers fp32"

    def __init__(self, llm: TransformersLanguageModel) -> None:
        self.llm = llm

    def generate(self, segments: list[Segment], new_tokens: int):
        return self.llm.generate([segments], new_tokens)

    def teacher_forced_top1(self, segments: list[Segment], ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            embeds, _ = self.llm.sequence(segments)
            embeds = torch.cat([embeds, self.llm.embed(torch.tensor(ids[:-1]))])[None]
            hidden = self.llm.decoder(inputs_embeds=embeds, position_ids=torch.arange(embeds.shape[1])[None])
            return self.llm.head(hidden.last_hidden_state[0, -len(ids):]).argmax(-1).numpy()


class LlamaCpp:
    def __init__(self, path: Path, quant: str, threads: int) -> None:
        self.name = f"llama.cpp {quant}"
        self.model = LlamaCppLanguageModel.from_gguf(path, n_threads=threads, n_ctx=1024, n_seq_max=1)
        self.model.eos_token_id = -1  # random weights: run every token

    def generate(self, segments: list[Segment], new_tokens: int):
        return self.model.generate([segments], new_tokens)

    def teacher_forced_top1(self, segments: list[Segment], ids: list[int]) -> np.ndarray:
        """Argmax after each of `ids` given the ones before (the backend's batch internals: all logits)."""
        model = self.model
        model.llama_cpp.llama_memory_clear(model.llama_cpp.llama_get_memory(model.context), True)
        for segment in segments:
            first = int(model.prefill(0, segment).argmax())
        start = int(segments[-1].positions[-1]) + 1
        batch = model.token_batch
        fill(batch.token, np.array(ids[:-1]), np.int32)
        model.set_batch(batch, np.arange(start, start + len(ids) - 1), [0] * (len(ids) - 1), last_only=False)
        model.run_batch(batch)
        return np.array([first] + [int(model.logits(i).argmax()) for i in range(len(ids) - 1)])


def median_generate(backend, segments, new_tokens: int, runs: int):
    backend.generate(segments, new_tokens)  # warm-up
    results = [backend.generate(segments, new_tokens) for _ in range(runs)]
    ttft = statistics.median(r.time_to_first_token_s for r in results)
    decode = statistics.median(r.decode_tokens_per_s for r in results) if new_tokens > 1 else None
    return ttft, decode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=3, help="timed runs per figure after one warm-up (median)")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens per decode measurement")
    p.add_argument("--agree-tokens", type=int, default=32, help="greedy tokens compared for agreement")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = MODELS.get("llava15")
    llm = TransformersLanguageModel.random(model, model.default_config(), 0, LAYERS)
    llm.eos_token_id = None  # random weights: run every token
    figures = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
               "llm": f"random LLaVA-1.5-7B LLM cut to {LAYERS} layers (4096 wide, vocabulary 32064)",
               "prefill_ms": {}, "decode_tokens_per_s": {}, "gguf_mib": {}, "agreement": {}}
    with tempfile.TemporaryDirectory(prefix="vtp-bench-llm-") as scratch:
        root = Path(scratch)
        llm.tokenizer.save_pretrained(root)
        backends = [Transformers(llm)]
        for quant in ("f16", "q4_k_m", "q8_0"):
            start = time.perf_counter()
            written = write_gguf(llm, root, root / f"llm-{quant}.gguf", quant)
            print(f"wrote {written.file}: {written.bytes / 2**20:.0f} MiB in {time.perf_counter() - start:.0f} s",
                  flush=True)
            figures["gguf_mib"][quant] = round(written.bytes / 2**20)
            backends.append(LlamaCpp(root / written.file, quant, args.threads))
        timed = backends[:3]  # transformers, f16, q4_k_m
        for image_tokens in IMAGE_TOKENS:
            segments = prompt(llm, image_tokens)
            for backend in timed:
                ttft, _ = median_generate(backend, segments, 1, args.runs)
                _, decode = median_generate(backend, segments, args.new_tokens, max(1, args.runs - 1))
                figures["prefill_ms"].setdefault(backend.name, {})[image_tokens] = round(ttft * 1e3, 1)
                figures["decode_tokens_per_s"].setdefault(backend.name, {})[image_tokens] = round(decode, 2)
                print(f"  {backend.name:18} {TEXT_BEFORE + TEXT_AFTER}+{image_tokens:<3} prefill {ttft * 1e3:8.1f} ms  "
                      f"decode {decode:6.2f} tokens/s", flush=True)
        segments = prompt(llm, 576, seed=1)
        reference = backends[0].generate(segments, args.agree_tokens).token_ids[0]
        for backend in backends[1:]:
            ids = backend.generate(segments, args.agree_tokens).token_ids[0]
            same = sum(a == b for a, b in zip(ids, reference))
            prefix = next((i for i, (a, b) in enumerate(zip(ids, reference)) if a != b), len(reference))
            forced = int((backend.teacher_forced_top1(segments, reference)
                          == backends[0].teacher_forced_top1(segments, reference)).sum())
            figures["agreement"][backend.name] = {"tokens": len(reference), "same_position": same,
                                                  "equal_prefix": prefix, "teacher_forced_top1": forced}
        for backend in backends[1:]:
            backend.model.close()
    print(table(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


def table(figures: dict) -> str:
    names = list(figures["prefill_ms"])
    lines = [f"{figures['llm']}; {figures['machine']}",
             f"{'prompt (text+image)':20}" + "".join(f"{name:>26}" for name in names),
             f"{'':20}" + "".join(f"{'prefill ms | decode tok/s':>26}" for _ in names)]
    for image_tokens in IMAGE_TOKENS:
        cells = "".join(f"{figures['prefill_ms'][n][image_tokens]:>15.1f} | "
                        f"{figures['decode_tokens_per_s'][n][image_tokens]:>8.2f}" for n in names)
        lines.append(f"{f'{TEXT_BEFORE + TEXT_AFTER}+{image_tokens}':20}{cells}")
    lines.append("GGUF size: " + ", ".join(f"{q} {mib} MiB" for q, mib in figures["gguf_mib"].items()))
    for name, agreement in figures["agreement"].items():
        lines.append(f"{name} vs transformers fp32, greedy over {agreement['tokens']} tokens: "
                     f"{agreement['same_position']} ids equal by position (first {agreement['equal_prefix']} "
                     f"identical); top-1 given transformers' history: {agreement['teacher_forced_top1']}/"
                     f"{agreement['tokens']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
