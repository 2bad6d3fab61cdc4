"""Latency profiles: per-stage timings of an export served by the runtime, sweeps over methods and keeps,
device records, and reports (typed JSON with a schema, CSV, PNG plots, a table, comparisons).

Stages: preprocess (image -> pixel values), text_graph (text-conditioned methods), vision_graph (tower +
pruning + projector), pruning_stage (the method alone on precomputed features; PyTorch, on this CPU),
prefill (the LLM's time to first token from the embeddings), decode (per generated token).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import os
import platform
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vtp_export import __version__
from vtp_export.contract import WeightsFolder
from vtp_export.errors import UsageError
from vtp_export.models import MODELS
from vtp_export.onnx.names import PIXEL_VALUES, PRODUCER, TEXT_EMBEDS
from vtp_export.onnx.sessions import cpu_threads
from vtp_export.records.codec import write_json
from vtp_export.records.folder import staged_folder
from vtp_export.records.profile import (
    PROFILE_SCHEMA, JetsonState, LlmInfo, MachineGpu, MachineLoad, MachineRecord, MemoryUse, Profile, ProfiledExport,
    ProfileReport, StageStats, SummaryRow, TokenCounts, read_report,
)
from vtp_export.runtime.llm.backends import DEFAULT_LLM_BACKEND
from vtp_export.runtime.pipeline import Pipeline
from vtp_export.trt.device import this_device

QUESTION = "Describe the scene in detail, including every object, its position and its colour."
STAGES = ("preprocess", "text_graph", "vision_graph", "pruning_stage", "prefill", "decode_per_token")
REPORT_FILES = ("report.json", "stages.csv", "latency_vs_keep.png", "stage_breakdown.png")
# Another process's load above this many cores, or this much steal, marks the timings as taken on a busy machine.
BUSY_LOAD, BUSY_STEAL_PERCENT = 0.5, 5.0

if TYPE_CHECKING:
    from vtp_export.export.plan import ExportRequest, Progress


def summary(seconds: list[float]) -> StageStats:
    """p50/p90/p99, mean, spread and range in milliseconds."""
    ms = np.array(seconds) * 1e3
    return StageStats(runs=len(ms), p50_ms=round(float(np.percentile(ms, 50)), 3),
                      p90_ms=round(float(np.percentile(ms, 90)), 3), p99_ms=round(float(np.percentile(ms, 99)), 3),
                      mean_ms=round(float(ms.mean()), 3), std_ms=round(float(ms.std()), 3),
                      min_ms=round(float(ms.min()), 3), max_ms=round(float(ms.max()), 3))


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


def device_record() -> MachineRecord:
    """The machine a report was measured on: CPU, GPU, versions, and on a Jetson its power mode and clocks."""
    import onnxruntime
    import transformers

    versions = {"vtp_export": __version__, "torch": package_version("torch"), "onnxruntime": onnxruntime.__version__,
                "transformers": transformers.__version__}
    device = this_device()
    if device.tensorrt is not None:
        versions["tensorrt"] = device.tensorrt
    gpu = jetson = None
    if device.sm is not None:
        gpu = MachineGpu(name=device.gpu_name, sm=device.sm, driver=command_output(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]))
    if device.jetpack is not None:
        jetson = JetsonState(jetpack=device.jetpack, nvpmodel=command_output(["nvpmodel", "-q"]),
                             jetson_clocks=command_output(["jetson_clocks", "--show"]))
    return MachineRecord(cpu=cpu_model(), cpu_threads_used=cpu_threads(), cpu_count=os.cpu_count(),
                         os=f"{platform.system()} {platform.release()}", python=platform.python_version(),
                         versions=versions, gpu=gpu, jetson=jetson)


def cpu_times() -> tuple[int, int] | None:
    """(total, steal) jiffies from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    return sum(fields), fields[7] if len(fields) > 7 else 0


def machine_load(before: tuple[int, int] | None, threads: int) -> MachineLoad:
    """Load beside our own threads over the last minute, and steal since `before`."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    after, steal = cpu_times(), 0.0
    if before is not None and after is not None and after[0] > before[0]:
        steal = 100.0 * (after[1] - before[1]) / (after[0] - before[0])
    other = max(load - threads, 0.0)
    busy = other > BUSY_LOAD * (os.cpu_count() or 1) or steal > BUSY_STEAL_PERCENT
    return MachineLoad(round(other, 2), round(steal, 2), busy)


def profile_export(folder: Path, runs: int = 10, warmup: int = 2, duration_s: float | None = None,
                   backend: str | None = None, llm_backend: str = DEFAULT_LLM_BACKEND, llm_layers: int | None = None,
                   new_tokens: int = 16, llm=None) -> Profile:
    """Time every stage of answering one question about one image with the export in `folder`."""
    if new_tokens < 2:
        raise UsageError(f"--new-tokens {new_tokens}: decoding is timed from the second token on, use 2 or more")
    with Pipeline.from_dir(folder, llm=llm, backend=backend, llm_backend=llm_backend, llm_layers=llm_layers) as pipe:
        before = cpu_times()
        record = pipe.record
        image = (np.random.default_rng(0).random((480, 640, 3)) * 255).astype(np.uint8)
        if pipe.geometry.frames:  # a video export: a still scene of the export's frames
            image = [image] * pipe.geometry.frames
        stages: dict[str, list[float]] = {"preprocess": timed(lambda: pipe.preprocess([image]), warmup, runs,
                                                              duration_s)}
        feeds = {PIXEL_VALUES: pipe.preprocess([image])}
        if pipe.clip_tokenizer is not None:
            stages["text_graph"] = timed(lambda: pipe.text_embeds([QUESTION]), warmup, runs, duration_s)
            feeds[TEXT_EMBEDS] = pipe.text_embeds([QUESTION])
        if record.method.prompt_conditioned:  # an embedding-table lookup and a mean: not a stage of its own
            feeds[TEXT_EMBEDS] = pipe.prompt_embeds([pipe.content(QUESTION, [image])])
        stages["vision_graph"] = timed(lambda: pipe.backend.run("vision", feeds), warmup, runs, duration_s)
        stages["pruning_stage"] = pruning_stage_times(pipe, feeds, warmup, runs, duration_s)
        vision = pipe.encode_images([image], [QUESTION])
        segments = pipe.segments(pipe.placeholder + pipe.model.image_separator + QUESTION, vision, range(1))
        stages["prefill"] = timed(lambda: pipe.llm.generate([segments], 1), warmup, runs, duration_s)
        decode = [pipe.llm.generate([segments], new_tokens) for _ in range(max(1, min(runs, 5)))]
        stages["decode_per_token"] = [1.0 / d.decode_tokens_per_s for d in decode if d.decode_tokens_per_s]
        return Profile(
            export=ProfiledExport(str(folder), record.model.name, record.method.name, record.method.label, record.keep,
                                  record.target.name, pipe.backend.name, pipe.llm.name),
            tokens=TokenCounts(sum(len(s) for s in segments if s.embeds is not None),
                               sum(len(s) for s in segments), new_tokens),
            llm=LlmInfo(pipe.llm.source, pipe.llm.num_layers, pipe.llm.hidden_size),
            stages={name: summary(times) for name, times in stages.items() if times},
            memory=MemoryUse(peak_host_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)),
            load=machine_load(before, cpu_threads()),
        )


def pruning_stage_times(pipe: Pipeline, feeds: dict, warmup: int, runs: int, duration_s: float | None) -> list[float]:
    """The method alone (what it computes beyond the tower's feature layer, selection, merging, projector) on
    the feature layer's outputs, in PyTorch; not timed (empty) where PyTorch or the export's weights (its
    checkpoint, or its random seed) are not here, as on a device."""
    weights = pipe.record.model.weights
    if importlib.util.find_spec("torch") is None or (isinstance(weights, WeightsFolder) and not weights.path.is_dir()):
        return []
    import torch

    from vtp_export.runtime.torch_backend import TorchBackend

    reference = TorchBackend(pipe.folder, pipe.record)
    graph = reference.modules["vision"]
    text = torch.from_numpy(feeds[TEXT_EMBEDS]) if TEXT_EMBEDS in feeds else None
    with torch.no_grad():
        base = graph.features.tower_features(torch.from_numpy(feeds[PIXEL_VALUES]))

    def stage():
        with torch.no_grad():
            graph.prune(graph.features.method_inputs(dataclasses.replace(base), text))

    times = timed(stage, warmup, runs, duration_s)
    reference.close()
    return times


def parse_methods(text: str) -> list[tuple[str, dict[str, str]]]:
    """'holov,holov:variant=paper' -> [("holov", {}), ("holov", {"variant": "paper"})], every name checked."""
    from vtp_export.methods import METHODS

    methods = []
    for item in filter(None, text.split(",")):
        name, *options = item.split(":")
        METHODS.get(name)
        pairs = [option.partition("=") for option in options]
        if any(not key or not sep for key, sep, _ in pairs):
            raise UsageError(f"--method {item!r}: options go as method:key=value")
        methods.append((name, {key: value for key, _, value in pairs}))
    if not methods:
        raise UsageError("--method needs at least one method")
    return methods


def parse_keeps(text: str) -> list[int]:
    try:
        keeps = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise UsageError(f"--keep {text!r}: expected comma-separated whole numbers like 576,64") from None
    if not keeps or any(k < 1 for k in keeps):
        raise UsageError(f"--keep {text!r}: expected positive whole numbers")
    return keeps


def sweep_plan(model: str, methods: list[tuple[str, dict[str, str]]], keeps: list[int], target: str,
               **export_args) -> list[ExportRequest]:
    """The exports of a sweep, each validated before the first runs; a keep of N (or more) is the unpruned
    model, profiled once as `none`."""
    from vtp_export.export.plan import ExportRequest, plan_export

    adapter = MODELS.get(model)
    total = None
    requests = []
    for keep in sorted(set(keeps), reverse=True):
        if total is None:
            from vtp_export.checkpoint.locate import locate_weights, read_model_config

            config = read_model_config(adapter, locate_weights(adapter, export_args.get("weights"),
                                                               export_args.get("random_weights", False), 0))
            total = adapter.geometry(config, export_args.get("model_options", {})).tokens_per_image
        if keep >= total:
            requests.append(ExportRequest(model=model, method="none", target=target, **export_args))
            continue
        requests += [ExportRequest(model=model, method=name, keep=keep, target=target, method_options=options,
                                   **export_args) for name, options in methods if name != "none"]
    for request in requests:
        plan_export(dataclasses.replace(request, out=Path(tempfile.gettempdir()) / "vtp-profile-plan-check"))
    return requests


def sweep(requests: list[ExportRequest], progress: Progress, **timing) -> list[Profile]:
    """Export each request to a scratch folder, profile it, delete it."""
    from vtp_export.export.job import export

    profiles = []
    with tempfile.TemporaryDirectory(prefix="vtp-profile-") as scratch:
        for i, request in enumerate(requests):
            options = "".join(f":{k}={v}" for k, v in sorted(request.method_options.items()))
            progress(progress_bar(i, len(requests), f"{request.method}{options} k{request.keep or 'all'}"))
            out = export(dataclasses.replace(request, out=Path(scratch) / f"export-{i}", verify_samples=1))
            profiles.append(profile_export(out, **timing))
            shutil.rmtree(out)
    progress(progress_bar(len(requests), len(requests), "done"))
    return profiles


def ideal_ratio(visual: int, prompt: int, full_visual: int) -> float:
    """Prefill cost proportional to sequence length: (prompt) / (prompt with every visual token)."""
    return prompt / (prompt - visual + full_visual)


def sweep_summary(profiles: list[Profile]) -> list[SummaryRow]:
    """One row per export: TTFT (prefill, and prefill plus any extra cost of the pruning stage) as a ratio to
    the unpruned export of the same model, next to the ideal ratio of the token counts."""
    full = next((p for p in profiles if p.export.method == "none"), None)
    rows = []
    for p in profiles:
        prefill, pruning = p.stages["prefill"], p.stages["pruning_stage"].p50_ms
        ratios = {}
        if full is not None:
            full_prefill = full.stages["prefill"].p50_ms
            # what the pruning stage costs beyond the unpruned model's projector (often less: fewer tokens projected)
            overhead = max(pruning - full.stages["pruning_stage"].p50_ms, 0.0)
            ratios = {"ttft_ratio": round(prefill.p50_ms / full_prefill, 3),
                      "ttft_with_overhead_ratio": round((prefill.p50_ms + overhead) / full_prefill, 3),
                      "ideal_ratio": round(ideal_ratio(p.tokens.visual, p.tokens.prompt, full.tokens.visual), 3)}
        rows.append(SummaryRow(
            label=p.export.label, method=p.export.method, keep=p.export.keep, visual_tokens=p.tokens.visual,
            prompt_tokens=p.tokens.prompt, vision_graph_ms=p.stages["vision_graph"].p50_ms, pruning_stage_ms=pruning,
            prefill_ms=prefill.p50_ms, prefill_p10_p90_ms=[prefill.min_ms, prefill.p90_ms],
            prefill_std_ms=prefill.std_ms, decode_ms_per_token=p.stages["decode_per_token"].p50_ms,
            busy_machine=p.load.busy, **ratios))
    return rows


def new_report(profiles: list[Profile]) -> ProfileReport:
    return ProfileReport(producer=PRODUCER, schema=PROFILE_SCHEMA,
                         created=datetime.now(timezone.utc).isoformat(timespec="seconds"), device=device_record(),
                         profiles=profiles, summary=sweep_summary(profiles))


def report_files(folder: Path) -> list[str] | None:
    """What a profile wrote in its folder, or None for a folder that is not a profile's."""
    from vtp_export.errors import RecordError

    try:
        read_report(folder / "report.json")
    except RecordError:
        return None
    return list(REPORT_FILES)


def write_report(report: ProfileReport, out: Path, replace: bool = False) -> list[Path]:
    """report.json, stages.csv and the plots into `out`, whole or not at all; returns the files written."""
    with staged_folder(out, replace, own_files=report_files) as stage:
        write_json(stage / "report.json", report)
        with (stage / "stages.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["label", "method", "keep", "stage", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms",
                             "min_ms", "max_ms", "runs"])
            for p in report.profiles:
                for stage_name, s in p.stages.items():
                    writer.writerow([p.export.label, p.export.method, p.export.keep, stage_name, s.p50_ms, s.p90_ms,
                                     s.p99_ms, s.mean_ms, s.std_ms, s.min_ms, s.max_ms, s.runs])
        plot(report, stage)
    return [out / name for name in REPORT_FILES]


def plot_title(report: ProfileReport) -> str:
    first = report.profiles[0]
    machine = report.device
    device = f"{machine.gpu.name}" if machine.gpu else f"{machine.cpu} ({machine.cpu_threads_used} threads)"
    return (f"{first.export.model}, LLM {first.llm.layers} layers x {first.llm.width} ({first.export.llm_backend}), "
            f"vision {first.export.backend}\n{device}")


def plot(report: ProfileReport, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    profiles = report.profiles
    unpruned = [p for p in profiles if p.export.method == "none"]  # every method's curve starts there
    labels = sorted({p.export.label for p in profiles if p.export.method != "none"}) or ["none"]
    figure, axes = pyplot.subplots(1, 2, figsize=(12, 4.5))
    for label in labels:
        pool = [p for p in profiles if p.export.label == label] + (unpruned if label != "none" else [])
        pool.sort(key=lambda p: p.tokens.visual)
        keeps = [p.tokens.visual for p in pool]
        for axis, stage in zip(axes, ("prefill", "vision_graph")):
            stats = [p.stages[stage] for p in pool]
            errors = np.array([[s.p50_ms - s.min_ms for s in stats], [s.p90_ms - s.p50_ms for s in stats]])
            axis.errorbar(keeps, [s.p50_ms for s in stats], yerr=errors, marker="o", capsize=3, label=label)
    if unpruned:
        full = unpruned[0]
        keeps = sorted({p.tokens.visual for p in profiles})
        prompt_text = full.tokens.prompt - full.tokens.visual
        ideal = [full.stages["prefill"].p50_ms * ideal_ratio(k, prompt_text + k, full.tokens.visual) for k in keeps]
        axes[0].plot(keeps, ideal, linestyle="--", color="grey", label="ideal (prefill ~ sequence length)")
    for axis, title in zip(axes, ("LLM prefill (time to first token)", "vision graph (tower + pruning)")):
        axis.set(xlabel="visual tokens", ylabel="ms (p50, bars min..p90)", title=title)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(plot_title(report), fontsize=9)
    figure.tight_layout()
    figure.savefig(out / "latency_vs_keep.png", dpi=110)
    pyplot.close(figure)

    figure, axis = pyplot.subplots(figsize=(max(6, 0.7 * len(profiles) + 2), 4.5))
    names = [f"{p.export.label}\nk{p.tokens.visual}" for p in profiles]
    bottom = np.zeros(len(profiles))
    for stage in ("preprocess", "text_graph", "vision_graph", "prefill"):
        values = np.array([p.stages[stage].p50_ms if stage in p.stages else 0.0 for p in profiles])
        axis.bar(names, values, bottom=bottom, label=stage)
        bottom += values
    axis.set(ylabel="p50 ms", title="time to first token by stage")
    axis.legend(fontsize=8)
    axis.tick_params(axis="x", labelsize=7)
    figure.suptitle(plot_title(report), fontsize=9)
    figure.tight_layout()
    figure.savefig(out / "stage_breakdown.png", dpi=110)
    pyplot.close(figure)


def table(report: ProfileReport) -> str:
    rows = sweep_summary(report.profiles)
    header = (f"{'method':26} {'tokens':>6} {'vision ms':>10} {'pruning ms':>10} {'prefill ms':>10} {'± std':>7} "
              f"{'decode ms/tok':>13}")
    has_ratio = rows and rows[0].ttft_ratio is not None
    if has_ratio:
        header += f" {'TTFT ratio':>10} {'+overhead':>9} {'ideal':>6}"
    lines = [header]
    for row in rows:
        line = (f"{row.label:26} {row.visual_tokens:>6} {row.vision_graph_ms:>10.1f} "
                f"{row.pruning_stage_ms:>10.2f} {row.prefill_ms:>10.1f} {row.prefill_std_ms:>7.1f} "
                f"{row.decode_ms_per_token:>13.2f}")
        if has_ratio:
            line += f" {row.ttft_ratio:>10.3f} {row.ttft_with_overhead_ratio:>9.3f} {row.ideal_ratio:>6.3f}"
        lines.append(line)
    busy = [p for p in report.profiles if p.load.busy]
    if busy:
        worst = max(busy, key=lambda p: p.load.other_load)
        lines.append(f"warning: the machine was busy during {len(busy)} of {len(report.profiles)} profiles (other "
                     f"load up to {worst.load.other_load}, steal up to {max(p.load.steal_percent for p in busy)}%): "
                     "timings are inflated")
    return "\n".join(lines)


def compare(before: ProfileReport, after: ProfileReport) -> str:
    """after / before of every p50 both reports have, matched on (method label, visual tokens, stage)."""
    def keyed(report: ProfileReport) -> dict:
        return {(p.export.label, p.tokens.visual, stage): s.p50_ms
                for p in report.profiles for stage, s in p.stages.items()}

    first, second = keyed(before), keyed(after)
    shared = sorted(set(first) & set(second))
    if not shared:
        raise UsageError("the two reports share no (method, tokens, stage) to compare")
    lines = [f"{'method':26} {'tokens':>6} {'stage':18} {'before ms':>10} {'after ms':>10} {'after/before':>12}"]
    for label, tokens, stage in shared:
        a, b = first[(label, tokens, stage)], second[(label, tokens, stage)]
        lines.append(f"{label:26} {tokens:>6} {stage:18} {a:>10.2f} {b:>10.2f} {b / a if a else float('nan'):>12.3f}")
    return "\n".join(lines)


def progress_bar(done: int, total: int, label: str, width: int = 24) -> str:
    filled = int(width * done / total) if total else width
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label}"


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
