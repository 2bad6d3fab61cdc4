"""Benchmark of video and multi-camera input on full-size Qwen2.5-VL (random weights, the 3B layout) on this machine.

8 frames at 448x448 are 4 temporal groups of 256 merged tokens: 1024 visual tokens per video unpruned. For each
export (`vtp-export --model qwen2.5-vl --random-weights --frames 8 --target cpu`, fp32 graph), the Pipeline with a
random LLM of the 3B's width and vocabulary cut to 2 decoder layers answers one question about a synthetic moving
video, then about C synthetic videos in one prompt (C cameras, each with its own budget): the vision graph's latency
(onnxruntime, once per video; C cameras are C graph calls: a `--batch C` export runs them as one call of the same
work), the visual tokens the LLM receives, the prefill (time to first token of the LLM) and its ratio to the
unpruned prompt's against the ideal ratio of the prompt lengths. Spatial methods spend K / 4 per group; `evs` one
budget over the video, at least the first group (K >= 256: 25% is its floor at 8 frames, so it has no 11% row).

  .venv/bin/python tools/bench_video.py [--runs 3] [--cameras 3] [--json figures.json]
"""

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vtp_export.runtime import Pipeline

MODEL, FRAMES, SIZE = "qwen2.5-vl", 8, 448
UNPRUNED = 4 * 256
QUESTION = "What is ahead, and is anything moving?"
# (method, keep per video): none, spatial per group at 25% and 11% (K a multiple of the 4 groups), evs at 25%.
PLAN = [("none", None), ("divprune", 256), ("divprune", 112), ("evs", 256)]


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


def measure(folder: Path, cameras: int, runs: int) -> list[dict]:
    """One camera's row and `cameras` cameras' row of one export: the vision graph once per camera (its latency
    dominates and does not depend on the prompt), then the prefill of each prompt `runs` times after a warm-up."""
    pipe = Pipeline.from_dir(folder, llm_layers=2)
    parts, vision_s = [], []
    for seed in range(cameras):  # preprocessing (ms) and the vision graph (s), camera by camera
        video = synthetic_video(seed)
        start = time.perf_counter()
        parts.append(pipe.encode_images([video], [QUESTION]))
        vision_s.append(time.perf_counter() - start)
    encoded = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    rows = []
    for count in (1, cameras):
        content = "".join(f"Camera {i}: {pipe.placeholder}\n" for i in range(count)) + QUESTION
        segments = pipe.segments(content, encoded, range(count))
        pipe.llm.generate([segments], 1)  # warm-up
        prefill = [pipe.llm.generate([segments], 1).time_to_first_token_s for _ in range(runs)]
        rows.append({"method": pipe.record.method.name, "cameras": count,
                     "visual_tokens": sum(len(s) for s in segments if s.embeds is not None),
                     "prompt_tokens": sum(len(s) for s in segments),
                     "vision_graph_ms": round(sum(vision_s[:count]) * 1e3),
                     "prefill_ms": round(statistics.median(prefill) * 1e3),
                     "prefill_min_ms": round(min(prefill) * 1e3)})
    pipe.close()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| method | cameras | visual tokens | prompt tokens | vision graph | prefill p50 (min) | TTFT ratio | "
             "ideal |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        base = next(r for r in rows if r["method"] == "none" and r["cameras"] == row["cameras"])
        ratio, ideal = row["prefill_ms"] / base["prefill_ms"], row["prompt_tokens"] / base["prompt_tokens"]
        lines.append(f"| `{row['method']}` | {row['cameras']} | {row['visual_tokens']} | {row['prompt_tokens']} | "
                     f"{row['vision_graph_ms']} ms | {row['prefill_ms']} ms ({row['prefill_min_ms']}) | "
                     f"{ratio:.3f} | {ideal:.3f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for method, keep in PLAN:
            folder = export(method, keep, Path(scratch))
            for row in measure(folder, args.cameras, args.runs):
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            shutil.rmtree(folder)
    rows.sort(key=lambda row: row["cameras"])
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "machine": platform.processor() or platform.machine()},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
