"""Benchmark of full-size Qwen2.5-VL (the 3B layout) or Qwen3-VL (the 2B layout), random weights, on this machine.

Prints, and writes as JSON with --json:
  1. `vtp-export --model M --method holov --keep 64 --target orin --random-weights` (the default size: 256 merged
     tokens; fp16 graph, TensorRT lint and parser): wall time and peak RSS of the process, against the target
     peak < 2x the fp32 weights of the exported part (tower + merger, and Qwen3-VL's DeepStack mergers);
  2. `vtp-export profile --model M --random-weights --llm-layers 2 --method ... --keep 256,...`: per export the
     vision graph's latency (onnxruntime, fp32 graph: tower + method + merger) next to `none`, and the time to
     first token (prefill of a random 2-layer LLM of the model's width and vocabulary, transformers) as a ratio
     to the unpruned prompt's, against the ideal ratio of the token counts;
  3. with --gguf: that LLM as GGUFs (`vtp-export llm --llm-layers N`: 2, or one past Qwen3-VL's DeepStack levels;
     f16 and q4_k_m: sizes) and llama.cpp's time to first token on the chat prompt with 256 and each keep's image
     embeddings at their original M-RoPE positions (DeepStack levels included).

  .venv/bin/python tools/bench_qwen.py [--model qwen3-vl] [--methods holov,dart,...] [--keeps 64,28] [--runs 5]
      [--gguf] [--no-profile] [--json figures.json]
"""

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNPRUNED = 256  # merged tokens at the default size (Qwen2.5-VL 448x448, Qwen3-VL 512x512)


def vtp_export(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "vtp_export", *args], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"vtp-export {' '.join(args)} failed:\n{result.stderr}")
    return result


def export_cost(model: str, scratch: Path) -> dict:
    out = scratch / "export"
    args = ("--model", model, "--method", "holov", "--keep", "64", "--target", "orin", "--random-weights",
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


def ggufs(scratch: Path) -> tuple[dict, int]:
    """The export's random LLM cut to the fewest layers llama.cpp runs it with (2; Qwen3-VL: one after its last
    DeepStack level) as f16 and q4_k_m GGUFs: {quant: {path, mib}}, and the layer count."""
    record = json.loads((scratch / "export" / "config.json").read_text())
    levels = next((output["shape"][1] for output in record["graphs"]["vision"]["outputs"]
                   if output["name"] == "deepstack_embeds"), 0)
    layers = max(2, levels + 1)
    files = {}
    for quant in ("q4_k_m", "f16"):  # f16 last: `vtp-export llm` keeps one GGUF in the folder, the last written
        path = scratch / f"llm-{quant}.gguf"
        vtp_export("llm", str(scratch / "export"), "--format", "gguf", "--quant", quant, "--llm-layers", str(layers))
        shutil.copyfile(scratch / "export" / f"llm-{quant}.gguf", path)  # the next conversion replaces it there
        files[quant] = {"path": str(path), "mib": round(path.stat().st_size / 2**20)}
    return files, layers


def llama_cpp_prefill(folder: Path, gguf: str, keeps: list[int], runs: int) -> list[dict]:
    """Time to first token of llama.cpp on the chat prompt with K image embeddings (random, at the original M-RoPE
    positions of K raster-ordered merged tokens, DeepStack levels included) for each K: median of `runs`."""
    import numpy as np

    from vtp_export.models import MODELS
    from vtp_export.records.export import read_export
    from vtp_export.runtime.llm.llama_cpp import LlamaCppLanguageModel
    from vtp_export.runtime.llm.protocol import Segment

    record = read_export(folder)
    model, geometry = MODELS.get(record.model.name), record.model.geometry
    rng = np.random.default_rng(0)
    rows = []
    with LlamaCppLanguageModel.from_gguf(gguf) as llm:
        before, after = (np.array(llm.tokenize(text, add_bos=False)) for text in
                         model.prompt(model.image_pad_token + "What is in the picture?", None).split(
                             model.image_pad_token))
        for keep in keeps:
            token_index = np.sort(rng.choice(geometry.num_patches, keep, replace=False)) + 1
            positions, resume = model.image_positions(len(before), token_index, geometry, "original")
            embeds = (rng.standard_normal((keep, llm.hidden_size)) * 0.02).astype(np.float32)
            levels = np.zeros((llm.deepstack_levels, keep, llm.hidden_size), np.float32) \
                if llm.deepstack_levels else None
            segments = [Segment(model.text_positions(0, len(before)), token_ids=before),
                        Segment(positions, embeds=embeds, deepstack=levels),
                        Segment(model.text_positions(resume, len(after)), token_ids=after)]
            times = sorted(llm.generate([segments], 1).time_to_first_token_s for _ in range(runs))
            rows.append({"visual_tokens": keep, "prompt_tokens": len(before) + keep + len(after),
                         "prefill_ms": round(1000 * times[len(times) // 2], 1)})
    for row in rows:
        row["ttft_ratio"] = round(row["prefill_ms"] / rows[0]["prefill_ms"], 3)
        row["ideal_ratio"] = round(row["prompt_tokens"] / rows[0]["prompt_tokens"], 3)
    return rows


def profile(model: str, methods: str, keeps: str, runs: int, out: Path, *llm: str) -> tuple[list[dict], dict]:
    """`llm`: the LLM's options (default: the random LLM cut to 2 layers, on transformers)."""
    llm = llm or ("--llm-layers", "2")
    vtp_export("profile", "--model", model, "--random-weights", *llm, "--method", methods,
               "--keep", f"{UNPRUNED},{keeps}", "--runs", str(runs), "--warmup", "1", "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    return report["summary"], report["device"]


def print_rows(rows: list[dict]) -> None:
    unpruned = next(row for row in rows if row["method"] == "none")
    print(f"{'method':12} {'tokens':>6} {'vision ms':>10} {'vs none':>8} {'prefill ms':>10} {'TTFT ratio':>10} "
          f"{'ideal':>6}")
    for row in rows:
        print(f"{row['label']:12} {row['visual_tokens']:>6} {row['vision_graph_ms']:>10.0f} "
              f"{row['vision_graph_ms'] / unpruned['vision_graph_ms']:>8.3f} {row['prefill_ms']:>10.1f} "
              f"{row['ttft_ratio']:>10.3f} {row['ideal_ratio']:>6.3f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen2.5-vl", choices=("qwen2.5-vl", "qwen3-vl"))
    parser.add_argument("--methods", default="holov,dart,divprune,vispruner,uniform")
    parser.add_argument("--keeps", default="64,28", help="25%% and 11%% of the 256 merged tokens by default")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--gguf", action="store_true", help="also the GGUF sizes and llama.cpp's prefill by keep")
    parser.add_argument("--no-profile", action="store_true", help="leave out step 2 (the profile sweep)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures = {"model": args.model,
               "machine": f"{platform.processor() or platform.machine()}, {platform.system()} {platform.release()}"}
    with tempfile.TemporaryDirectory(prefix="bench-qwen-") as scratch_name:
        scratch = Path(scratch_name)
        figures["export"] = export_cost(args.model, scratch)
        cost = figures["export"]
        print(f"export: {cost['wall_s']} s, peak RSS {cost['peak_rss_mib']} MiB = {cost['peak_over_weights']}x the "
              f"fp32 weights ({cost['weights_fp32_mib']} MiB); {cost['nodes']} nodes, {cost['tensorrt_layers']} "
              "TensorRT layers", flush=True)
        if not args.no_profile:
            figures["profile"], figures["device"] = profile(args.model, args.methods, args.keeps, args.runs,
                                                            scratch / "profile")
            print("transformers LLM (2 layers, fp32):")
            print_rows(figures["profile"])
        if args.gguf:
            files, layers = ggufs(scratch)
            figures["gguf_mib"] = {quant: entry["mib"] for quant, entry in files.items()}
            print(f"GGUF ({layers} layers): {', '.join(f'{q} {mib} MiB' for q, mib in figures['gguf_mib'].items())}")
            keeps = [UNPRUNED, *(int(k) for k in args.keeps.split(","))]
            figures["llama_cpp_prefill"] = {quant: llama_cpp_prefill(scratch / "export", entry["path"], keeps,
                                                                     args.runs) for quant, entry in files.items()}
            for quant, rows in figures["llama_cpp_prefill"].items():
                print(f"llama.cpp {quant} prefill ({layers} layers): " + ", ".join(
                    f"{r['visual_tokens']} tokens {r['prefill_ms']} ms (x{r['ttft_ratio']}, ideal x{r['ideal_ratio']})"
                    for r in rows), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
