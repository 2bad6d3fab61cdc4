"""Benchmark of video and multi-camera input on full-size Qwen2.5-VL (random weights, the 3B layout) on this machine.

8 frames at 448x448 are 4 temporal groups of 256 merged tokens: 1024 visual tokens per video unpruned. For each
export (`vtp-export --model qwen2.5-vl --random-weights --frames 8 --target cpu`, fp32 graph), the Pipeline encodes
C synthetic moving videos (C cameras, each with its own budget) with the vision graph (onnxruntime, once per video;
C cameras are C graph calls: a `--batch C` export runs them as one call of the same work) and lays out one question
about the first camera and one about all C. Then one random LLM of the 3B's width and vocabulary cut to 2 decoder
layers (the same seeded weights every random export gets) prefills every prompt, `runs` rounds taking the prompts in
turn, so that the machine's drift falls on all rows alike: the visual tokens the LLM receives, the prefill (time to
first token of the LLM) and its ratio to the unpruned prompt's against the ideal ratio of the prompt lengths.
Spatial methods spend K / 4 per group; `evs` one budget over the video, at least the first group (K >= 256: 25% is
its floor at 8 frames, where it keeps exactly the first group, so it has no 11% row; 50% shows it choosing).

  .venv/bin/python tools/bench_video.py [--runs 5] [--cameras 3] [--json figures.json]
"""

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vtp_export.runtime import Pipeline
from vtp_export.runtime.llm.protocol import LanguageModelBackend, Segment

MODEL, FRAMES, SIZE = "qwen2.5-vl", 8, 448
QUESTION = "What is ahead, and is anything moving?"
# (method, keep per video): none, spatial per group at 25% and 11% (K a multiple of the 4 groups), evs at 25% and 50%.
PLAN = [("none", None), ("divprune", 256), ("divprune", 112), ("evs", 256), ("evs", 512)]


@dataclass
class Prompt:
    """One row: an export's prompt for `cameras` cameras, and what its vision graph took."""

    method: str
    cameras: int
    segments: list[Segment]
    vision_graph_ms: int

    @property
    def visual_tokens(self) -> int:
        return sum(len(s) for s in self.segments if s.embeds is not None)

    @property
    def prompt_tokens(self) -> int:
        return sum(len(s) for s in self.segments)


def synthetic_video(seed: int) -> list[Image.Image]:
    """A random picture with a block moving across it, FRAMES frames of 640x480."""
    rng = np.random.default_rng(seed)
    base = (rng.random((480, 640, 3)) * 255).astype(np.uint8)
    frames = []
    for i in range(FRAMES):
        frame = base.copy()
        frame[200:280, 40 + 60 * i:120 + 60 * i] = 255
        frames.append(Image.fromarray(frame))
    return frames


def export(method: str, keep: int | None, scratch: Path) -> Path:
    from vtp_export.cli import main

    out = scratch / f"{method}-{keep}"
    args = ["--model", MODEL, "--method", method, "--target", "cpu", "--random-weights", "--frames", str(FRAMES),
            "--image-size", f"{SIZE}x{SIZE}", "--verify-samples", "1", "--out", str(out)]
    if keep is not None:
        args += ["--keep", str(keep)]
    start = time.perf_counter()
    if main(args):
        raise SystemExit(f"vtp-export {' '.join(args)} failed")
    print(f"  exported {out.name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return out


def encode(pipe: Pipeline, cameras: int) -> list[Prompt]:
    """One camera's prompt and `cameras` cameras' prompt of one export, the vision graph run camera by camera
    (preprocessing takes milliseconds of it)."""
    parts, vision_s = [], []
    for seed in range(cameras):
        start = time.perf_counter()
        parts.append(pipe.encode_images([synthetic_video(seed)], [QUESTION]))
        vision_s.append(time.perf_counter() - start)
    encoded = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    prompts = []
    for count in (1, cameras):
        content = "".join(f"Camera {i}: {pipe.placeholder}\n" for i in range(count)) + QUESTION
        prompts.append(Prompt(pipe.record.method.name, count, pipe.segments(content, encoded, range(count)),
                              round(sum(vision_s[:count]) * 1e3)))
    return prompts


def prefill(llm: LanguageModelBackend, prompts: list[Prompt], runs: int) -> list[list[float]]:
    """Each prompt's prefill times in ms: a warm-up each, then `runs` rounds over all prompts in turn."""
    for prompt in prompts:
        llm.generate([prompt.segments], 1)
    times: list[list[float]] = [[] for _ in prompts]
    for _ in range(runs):
        for prompt, samples in zip(prompts, times):
            samples.append(llm.generate([prompt.segments], 1).time_to_first_token_s * 1e3)
    return times


def rows(prompts: list[Prompt], times: list[list[float]]) -> list[dict]:
    return sorted(({"method": p.method, "cameras": p.cameras, "visual_tokens": p.visual_tokens,
                    "prompt_tokens": p.prompt_tokens, "vision_graph_ms": p.vision_graph_ms,
                    "prefill_ms": round(statistics.median(t)), "prefill_min_ms": round(min(t))}
                   for p, t in zip(prompts, times)), key=lambda row: row["cameras"])


def table(rows: list[dict]) -> str:
    lines = ["| method | cameras | visual tokens | prompt tokens | vision graph | prefill p50 (min) | TTFT ratio | "
             "ideal |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        base = next(r for r in rows if r["method"] == "none" and r["cameras"] == row["cameras"])
        ratio, ideal = row["prefill_ms"] / base["prefill_ms"], row["prompt_tokens"] / base["prompt_tokens"]
        lines.append(f"| `{row['method']}` | {row['cameras']} | {row['visual_tokens']} | {row['prompt_tokens']} | "
                     f"{row['vision_graph_ms'] / 1e3:.1f} s | {row['prefill_ms']} ms ({row['prefill_min_ms']}) | "
                     f"{ratio:.3f} | {ideal:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    prompts: list[Prompt] = []
    llm = None
    with tempfile.TemporaryDirectory() as scratch:
        for method, keep in PLAN:
            folder = export(method, keep, Path(scratch))
            pipe = Pipeline.from_dir(folder, llm_layers=2) if llm is None else Pipeline.from_dir(folder, llm=llm)
            llm = pipe.llm
            prompts += encode(pipe, args.cameras)
            print(f"  vision graph {[p.vision_graph_ms for p in prompts[-2:]]} ms", file=sys.stderr, flush=True)
            pipe.backend.close()
            shutil.rmtree(folder)
    measured = rows(prompts, prefill(llm, prompts, args.runs))
    print(table(measured))
    if args.json:
        args.json.write_text(json.dumps({"rows": measured, "machine": platform.processor() or platform.machine()},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
