"""Latency profiles: per-stage timings of an export served by the runtime, sweeps over methods and keeps,
device records, and reports (JSON with a stable schema, CSV, PNG plots, a table, comparisons).

Stages: preprocess (image -> pixel values), text_graph (text-conditioned methods), vision_graph (tower +
pruning + projector), pruning_stage (the method alone on precomputed features; PyTorch, on this CPU),
prefill (the LLM's time to first token from the embeddings), decode (per generated token).
"""

import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vtp_export import __version__
from vtp_export.engine import this_device
from vtp_export.errors import UsageError
from vtp_export.graph_io import PIXEL_VALUES, TEXT_EMBEDS
from vtp_export.methods.base import VisionFeatures
from vtp_export.models import geometry_of
from vtp_export.runtime.backends import TorchBackend
from vtp_export.runtime.images import pixel_values
from vtp_export.runtime.llm import LanguageModel
from vtp_export.runtime.pipeline import Pipeline, left_padded
from vtp_export.runtime.tokenizer import IMAGE_TOKEN
from vtp_export.verify import cpu_threads

SCHEMA = "vtp-export.profile/1"
QUESTION = "Describe the scene in detail, including every object, its position and its colour."
STAGES = ("preprocess", "text_graph", "vision_graph", "pruning_stage", "prefill", "decode_per_token")

Progress = Callable[[str], None]


def summary(seconds: list[float]) -> dict:
    """p50/p90/p99, mean, spread and range in milliseconds."""
    ms = np.array(seconds) * 1e3
    return {"runs": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p90_ms": round(float(np.percentile(ms, 90)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "std_ms": round(float(ms.std()), 3),
            "min_ms": round(float(ms.min()), 3), "max_ms": round(float(ms.max()), 3)}


def timed(fn: Callable[[], object], warmup: int, runs: int, duration_s: float | None) -> list[float]:
    """Warm up, then `runs` timed calls, or as many as fit in `duration_s` (at least one)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    deadline = time.perf_counter() + duration_s if duration_s else None

    def more() -> bool:
        return len(times) < runs if deadline is None else not times or time.perf_counter() < deadline

    while more():
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def command_output(command: list[str]) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_record() -> dict:
    """The machine a report was measured on: CPU, GPU, versions, and on a Jetson its power mode and clocks."""
    import onnxruntime
    import transformers

    record = {
        "cpu": cpu_model(), "cpu_threads_used": cpu_threads(), "cpu_count": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "versions": {"vtp_export": __version__, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                     "transformers": transformers.__version__},
        "gpu": None,
    }
    device = this_device()
    if device.tensorrt is not None:
        record["versions"]["tensorrt"] = device.tensorrt
    if device.sm is not None:
        record["gpu"] = {"name": device.gpu_name, "sm": device.sm,
                         "driver": command_output(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
                         "cuda": torch.version.cuda}
    if device.jetpack is not None:
        record["jetson"] = {"jetpack": device.jetpack, "nvpmodel": command_output(["nvpmodel", "-q"]),
                            "jetson_clocks": command_output(["jetson_clocks", "--show"])}
    return record


def profile_export(folder: Path, runs: int = 10, warmup: int = 2, duration_s: float | None = None,
                   backend: str | None = None, llm: LanguageModel | None = None, new_tokens: int = 16) -> dict:
    """Time every stage of answering one question about one image with the export in `folder`."""
    pipe = Pipeline.from_dir(folder, llm=llm, backend=backend)
    record = pipe.record
    image = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
    size = record["model"]["geometry"]["image_size"]
    stages: dict[str, list[float]] = {}
    stages["preprocess"] = timed(lambda: pixel_values([image], size), warmup, runs, duration_s)
    feeds = {PIXEL_VALUES: pixel_values([image], size)}
    if pipe.clip_tokenizer is not None:
        stages["text_graph"] = timed(lambda: pipe.text_embeds([QUESTION]), warmup, runs, duration_s)
        feeds[TEXT_EMBEDS] = pipe.text_embeds([QUESTION])
    stages["vision_graph"] = timed(lambda: pipe.backend.run("vision", feeds), warmup, runs, duration_s)
    stages["pruning_stage"] = pruning_stage_times(pipe, feeds, warmup, runs, duration_s)
    vision = pipe.encode_images([image], [QUESTION])
    sequence = pipe.sequence(f"{IMAGE_TOKEN}\n{QUESTION}", vision, range(1))
    embeds, mask, positions = left_padded([sequence])

    def generate(tokens: int):
        return pipe.llm.generate(embeds, mask, positions, tokens, eos_token_id=None)

    stages["prefill"] = timed(lambda: generate(1), warmup, runs, duration_s)
    decode = [generate(new_tokens) for _ in range(max(1, min(runs, 5)))]
    stages["decode_per_token"] = [1.0 / d.decode_tokens_per_s for d in decode if d.decode_tokens_per_s]
    gpu_peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return {
        "schema": SCHEMA,
        "export": {"folder": str(folder), "model": record["model"]["name"], "method": record["method"]["name"],
                   "keep": record["keep"], "target": record["target"]["name"], "backend": pipe.backend.name},
        "tokens": {"visual": sequence.image_tokens[0], "prompt": len(sequence.embeds), "new": new_tokens},
        "llm": {"source": pipe.llm.source, "layers": pipe.llm.config.num_hidden_layers,
                "width": pipe.llm.config.hidden_size},
        "stages": {name: summary(times) for name, times in stages.items() if times},
        "memory": {"peak_host_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                   "peak_gpu_mib": None if gpu_peak is None else round(gpu_peak / 2**20)},
    }


def pruning_stage_times(pipe: Pipeline, feeds: dict, warmup: int, runs: int, duration_s: float | None) -> list[float]:
    """The method alone (scores, selection, merging, projector) on the feature layer's outputs, in PyTorch."""
    reference = pipe.backend if isinstance(pipe.backend, TorchBackend) else TorchBackend(pipe.folder, pipe.record)
    encoder = reference.modules["vision"]
    text = torch.from_numpy(feeds[TEXT_EMBEDS]) if TEXT_EMBEDS in feeds else None
    with torch.no_grad():
        features = encoder.features(torch.from_numpy(feeds[PIXEL_VALUES]), text)
    base = {"hidden": features.hidden, "cls_attention": features.cls_attention, "keys": features.keys}

    def stage():
        with torch.no_grad():
            encoder.method(encoder.method_inputs(VisionFeatures(**base), text), encoder.projector)

    return timed(stage, warmup, runs, duration_s)


def random_llm(config, layers: int | None, seed: int = 0) -> LanguageModel:
    """A random LLM of the checkpoint's width and vocabulary, with `layers` decoder layers (fits memory)."""
    text = config.text_config.__class__.from_dict(config.text_config.to_dict())
    if layers is not None:
        text.num_hidden_layers = layers
    shaped = config.__class__.from_dict(config.to_dict() | {"text_config": text.to_dict()})
    return LanguageModel.random(shaped, seed)


def sweep_plan(methods: list[str], keeps: list[int], config) -> list[tuple[str, int | None]]:
    """(method, keep) exports of a sweep; a keep of N (or more) is the unpruned model, profiled once as `none`."""
    num_patches = geometry_of(config).num_patches
    plan: list[tuple[str, int | None]] = []
    for keep in sorted(set(keeps), reverse=True):
        if keep >= num_patches:
            plan.append(("none", None))
        else:
            plan += [(method, keep) for method in methods if method != "none"]
    return plan


def ideal_ratio(visual: int, prompt: int, full_visual: int) -> float:
    """Prefill cost proportional to sequence length: (prompt) / (prompt with every visual token)."""
    return prompt / (prompt - visual + full_visual)


def sweep_summary(reports: list[dict]) -> list[dict]:
    """One row per export: TTFT (prefill, and prefill plus any extra cost of the pruning stage) as a ratio to
    the unpruned export of the same model, next to the ideal ratio of the token counts."""
    full = next((r for r in reports if r["export"]["method"] == "none"), None)
    rows = []
    for r in reports:
        prefill = r["stages"]["prefill"]["p50_ms"]
        row = {"method": r["export"]["method"], "keep": r["export"]["keep"], "visual_tokens": r["tokens"]["visual"],
               "prompt_tokens": r["tokens"]["prompt"], "vision_graph_ms": r["stages"]["vision_graph"]["p50_ms"],
               "pruning_stage_ms": r["stages"]["pruning_stage"]["p50_ms"], "prefill_ms": prefill,
               "decode_ms_per_token": r["stages"]["decode_per_token"]["p50_ms"]}
        if full is not None:
            full_prefill = full["stages"]["prefill"]["p50_ms"]
            # what the pruning stage costs beyond the unpruned model's projector (often less: fewer tokens projected)
            overhead = max(row["pruning_stage_ms"] - full["stages"]["pruning_stage"]["p50_ms"], 0.0)
            row |= {"ttft_ratio": round(prefill / full_prefill, 3),
                    "ttft_with_overhead_ratio": round((prefill + overhead) / full_prefill, 3),
                    "ideal_ratio": round(ideal_ratio(r["tokens"]["visual"], r["tokens"]["prompt"],
                                                     full["tokens"]["visual"]), 3)}
        rows.append(row)
    return rows


def write_report(report: dict, out: Path) -> list[Path]:
    """report.json, stages.csv and the plots into `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    with (out / "stages.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "keep", "stage", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "runs"])
        for r in report["profiles"]:
            for stage, s in r["stages"].items():
                writer.writerow([r["export"]["method"], r["export"]["keep"], stage, s["p50_ms"], s["p90_ms"],
                                 s["p99_ms"], s["mean_ms"], s["std_ms"], s["runs"]])
    return [out / "report.json", out / "stages.csv", *plot(report, out)]


def plot(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    profiles = report["profiles"]
    unpruned = [r for r in profiles if r["export"]["method"] == "none"]  # every method's curve starts there
    methods = sorted({r["export"]["method"] for r in profiles} - {"none"}) or ["none"]
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4))
    for method in methods:
        pool = [r for r in profiles if r["export"]["method"] == method] + (unpruned if method != "none" else [])
        pool.sort(key=lambda r: r["tokens"]["visual"])
        keeps = [r["tokens"]["visual"] for r in pool]
        axes[0].plot(keeps, [r["stages"]["prefill"]["p50_ms"] for r in pool], marker="o", label=method)
        axes[1].plot(keeps, [r["stages"]["vision_graph"]["p50_ms"] for r in pool], marker="o", label=method)
    for axis, title in zip(axes, ("LLM prefill (time to first token)", "vision graph (tower + pruning)")):
        axis.set(xlabel="visual tokens", ylabel="p50 ms", title=title)
        axis.grid(alpha=0.3)
    axes[0].legend()
    figure.tight_layout()
    latency = out / "latency_vs_keep.png"
    figure.savefig(latency, dpi=110)
    pyplot.close(figure)

    figure, axis = pyplot.subplots(figsize=(max(6, 0.6 * len(profiles) + 2), 4))
    labels = [f"{r['export']['method']}\nk{r['tokens']['visual']}" for r in profiles]
    bottom = np.zeros(len(profiles))
    for stage in ("preprocess", "text_graph", "vision_graph", "prefill"):
        values = np.array([r["stages"].get(stage, {}).get("p50_ms", 0.0) for r in profiles])
        axis.bar(labels, values, bottom=bottom, label=stage)
        bottom += values
    axis.set(ylabel="p50 ms", title="time to first token by stage")
    axis.legend()
    axis.tick_params(axis="x", labelsize=7)
    figure.tight_layout()
    stacked = out / "stage_breakdown.png"
    figure.savefig(stacked, dpi=110)
    pyplot.close(figure)
    return [latency, stacked]


def table(report: dict) -> str:
    rows = sweep_summary(report["profiles"])
    header = f"{'method':14} {'tokens':>6} {'vision ms':>10} {'pruning ms':>10} {'prefill ms':>10} {'decode ms/tok':>13}"
    has_ratio = rows and "ttft_ratio" in rows[0]
    if has_ratio:
        header += f" {'TTFT ratio':>10} {'+overhead':>9} {'ideal':>6}"
    lines = [header]
    for row in rows:
        line = (f"{row['method']:14} {row['visual_tokens']:>6} {row['vision_graph_ms']:>10.1f} "
                f"{row['pruning_stage_ms']:>10.2f} {row['prefill_ms']:>10.1f} {row['decode_ms_per_token']:>13.2f}")
        if has_ratio:
            line += f" {row['ttft_ratio']:>10.3f} {row['ttft_with_overhead_ratio']:>9.3f} {row['ideal_ratio']:>6.3f}"
        lines.append(line)
    return "\n".join(lines)


def compare(before: dict, after: dict) -> str:
    """after / before of every p50 both reports have, matched on (method, visual tokens, stage)."""
    def keyed(report):
        return {(r["export"]["method"], r["tokens"]["visual"], stage): s["p50_ms"]
                for r in report["profiles"] for stage, s in r["stages"].items()}

    first, second = keyed(before), keyed(after)
    shared = sorted(set(first) & set(second))
    if not shared:
        raise UsageError("the two reports share no (method, tokens, stage) to compare")
    lines = [f"{'method':14} {'tokens':>6} {'stage':18} {'before ms':>10} {'after ms':>10} {'after/before':>12}"]
    for method, tokens, stage in shared:
        a, b = first[(method, tokens, stage)], second[(method, tokens, stage)]
        lines.append(f"{method:14} {tokens:>6} {stage:18} {a:>10.2f} {b:>10.2f} {b / a if a else float('nan'):>12.3f}")
    return "\n".join(lines)


def read_report(path: Path) -> dict:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read profile report {path}: {error}") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise UsageError(f"{path} is not a vtp-export profile report (schema {SCHEMA})")
    return report


def new_report(profiles: list[dict]) -> dict:
    return {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "device": device_record(), "profiles": profiles, "summary": sweep_summary(profiles)}


def progress_bar(done: int, total: int, label: str, width: int = 24) -> str:
    filled = int(width * done / total) if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"
