"""Benchmark of full-size Qwen2.5-VL (random weights, the 3B layout) on this machine.

Prints, and writes as JSON with --json:
  1. `vtp-export --model qwen2.5-vl --method holov --keep 64 --target orin --random-weights` (448x448, 256 merged
     tokens, fp16 graph, TensorRT lint and parser): wall time and peak RSS of the process, against the target
     peak < 2x the fp32 weights of the exported part (tower + merger);
  2. `vtp-export profile --model qwen2.5-vl --random-weights --llm-layers 2 --method ... --keep 256,...`: per
     export the vision graph's latency (onnxruntime, fp32 graph: tower + method + merger) next to `none`, and
     the time to first token (prefill of a random 2-layer LLM of the 3B's width and vocabulary) as a ratio to
     the unpruned prompt's, against the ideal ratio of the token counts.

  .venv/bin/python tools/bench_qwen.py [--methods holov,dart,...] [--keeps 128,64] [--runs 5] [--json figures.json]
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = "qwen2.5-vl"
UNPRUNED = 256  # merged tokens at the default 448x448


def vtp_export(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "vtp_export", *args], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"vtp-export {' '.join(args)} failed:\n{result.stderr}")
    return result


def export_cost(scratch: Path) -> dict:
    out = scratch / "export"
    args = ("--model", MODEL, "--method", "holov", "--keep", "64", "--target", "orin", "--random-weights",
            "--out", str(out))
    start = time.perf_counter()
    vtp_export(*args)
    wall = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the export is the first child
    record = json.loads((out / "config.json").read_text())
    weights_mib = record["model"]["vision_parameters_bytes_fp32"] / 2**20
    vision = record["graphs"]["vision"]
    return {"command": "vtp-export " + " ".join(args[:-2]), "wall_s": round(wall, 1), "peak_rss_mib": round(peak_mib),
            "weights_fp32_mib": round(weights_mib), "peak_over_weights": round(peak_mib / weights_mib, 2),
            "nodes": vision["nodes"], "tensorrt_layers": vision["tensorrt_parser"]["layers"],
            "fp16_fidelity": vision["precision"]["fidelity"], "stage_timings_s": record["timings"]}


def profile(methods: str, keeps: str, runs: int, scratch: Path) -> tuple[list[dict], dict]:
    out = scratch / "profile"
    vtp_export("profile", "--model", MODEL, "--random-weights", "--llm-layers", "2", "--method", methods,
               "--keep", f"{UNPRUNED},{keeps}", "--runs", str(runs), "--warmup", "1", "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    return report["summary"], report["device"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="holov,dart,divprune,vispruner,uniform")
    parser.add_argument("--keeps", default="128,64")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures = {"machine": f"{platform.processor() or platform.machine()}, {platform.system()} {platform.release()}"}
    with tempfile.TemporaryDirectory(prefix="bench-qwen-") as scratch_name:
        scratch = Path(scratch_name)
        figures["export"] = export_cost(scratch)
        cost = figures["export"]
        print(f"export: {cost['wall_s']} s, peak RSS {cost['peak_rss_mib']} MiB = {cost['peak_over_weights']}x the "
              f"fp32 weights ({cost['weights_fp32_mib']} MiB); {cost['nodes']} nodes, {cost['tensorrt_layers']} "
              "TensorRT layers", flush=True)
        figures["profile"], figures["device"] = profile(args.methods, args.keeps, args.runs, scratch)
    unpruned = next(row for row in figures["profile"] if row["method"] == "none")
    print(f"{'method':12} {'tokens':>6} {'vision ms':>10} {'vs none':>8} {'prefill ms':>10} {'TTFT ratio':>10} "
          f"{'ideal':>6}")
    for row in figures["profile"]:
        print(f"{row['label']:12} {row['visual_tokens']:>6} {row['vision_graph_ms']:>10.0f} "
              f"{row['vision_graph_ms'] / unpruned['vision_graph_ms']:>8.3f} {row['prefill_ms']:>10.1f} "
              f"{row['ttft_ratio']:>10.3f} {row['ideal_ratio']:>6.3f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
