"""vtp-export build: an export folder's ONNX graphs -> TensorRT engines on this device, or, where this
machine is not the target device, the device-side recipe and one line on how to run it there.

On the device: the TensorRT Python API (`tensorrt` and a CUDA GPU of the target's compute capability),
a strongly typed network where the target's TensorRT has them (9+: the graph's types are the precision),
else (TensorRT 8.5) fp16 by default with the scores and normalisations pinned to fp32, a persisted timing cache, the
target's workspace cap, memory monitoring where TensorRT has it (10.6+), an optimisation profile for a
dynamic batch, progress while building, and a Polygraphy comparison onnxruntime vs TensorRT recorded in
the engine folder's config.json.
"""

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import numpy as np

from vtp_export import __version__
from vtp_export.errors import BuildError, UsageError
from vtp_export.onnx.inputs import pixel_shape, random_input_ids, random_prompt_embeds
from vtp_export.onnx.names import (
    CONFIG_JSON, ENGINE_FOLDER, IMAGE_EMBEDS, INPUT_IDS, MAX_DYNAMIC_BATCH, PRODUCER, TEXT_EMBEDS, TOKEN_INDEX,
)
from vtp_export.precision.agreement import matched_rows, set_overlap
from vtp_export.precision.transforms import engine_precision, float32_nodes, graph_precision
from vtp_export.records.codec import sha256, write_json
from vtp_export.records.engine import ENGINE_SCHEMA, EngineFile, EngineFlags, EngineRecord, GpuRecord, Parity
from vtp_export.records.export import DeviceBuild, ExportRecord, GraphRecord, read_export, update_export
from vtp_export.records.folder import staged_folder
from vtp_export.targets import TARGETS, Target
from vtp_export.toolchains import labels
from vtp_export.trt.device import Device, this_device
from vtp_export.trt.parser import progress_monitor
from vtp_export.trt.recipe import BUILD_SCRIPT, TIMING_CACHE, engine_name, write_build_script
from vtp_export.util.interrupts import deferred_interrupt

# fp16 engine against the fp32 graph: what "agrees" means (recorded, not enforced: fp16 near-ties flip choices).
FP16_TOLERANCE = {"atol": 5e-2, "rtol": 5e-2}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildOutcome:
    engine_folder: Path | None  # None: not built here (cross-target), see message
    message: str


def why_not_here(target: Target, device: Device) -> str | None:
    """Why this machine cannot build the target's engines, or None if it can."""
    if device.tensorrt is None:
        return "no TensorRT here"
    if device.sm is None:
        return "no CUDA GPU here"
    if device.sm != target.sm:
        return f"this GPU is {device.gpu_name} (sm_{device.sm}), the target is {target.gpu_arch}"
    if not target.accepts_tensorrt(device.tensorrt):
        return f"TensorRT {device.tensorrt} here, the target ships TensorRT {target.tensorrt_range}"
    return None


def build(folder: Path, out: Path | None = None, precision: str | None = None, device: Device | None = None,
          progress: Progress = lambda _: None) -> BuildOutcome:
    record = read_export(folder)
    target = TARGETS.get(record.target.name)
    if not target.toolchain.builds_engines:
        raise UsageError(f"{folder} was exported for {target.name}, which runs {target.toolchain.vision_backend}: "
                         f"there is no engine to build (export with a {labels(lambda t: t.builds_engines)} --target)")
    if target.strongly_typed:
        precision = typed_precision(folder, record.graphs["vision"].file, target, precision)
    else:
        precision = engine_precision(target, precision or record.device_build.precision)
    pinned = precision == "fp16" and not target.strongly_typed
    graphs = {role: dataclasses.replace(graph, float32_nodes=float32_nodes(folder / graph.file) if pinned else [])
              for role, graph in record.graphs.items()}
    device = device or this_device()
    reason = why_not_here(target, device)
    if reason is not None:
        if out is not None:
            raise UsageError(f"--out names where engines go, and none are built here ({reason}); the recipe is "
                             f"{folder / BUILD_SCRIPT}")
        if precision != record.device_build.precision:
            rewrite_recipe(folder, target, graphs, precision)
        return BuildOutcome(None, f"{reason}: engines are built on the device; copy {folder} to the "
                                  f"{target.summary} and run there: bash {BUILD_SCRIPT} ({precision})")

    import tensorrt as trt

    out = out or folder / ENGINE_FOLDER
    engines = {}
    with staged_folder(out, own_files=engine_files) as stage:
        cache = folder / TIMING_CACHE
        for role, graph in graphs.items():
            progress(f"building {engine_name(graph.file)} ({precision}) with TensorRT {trt.__version__}")
            engines[role] = build_engine(trt, folder / graph.file, stage / engine_name(graph.file), target, precision,
                                         graph, cache, progress)
        progress("comparing TensorRT with onnxruntime (Polygraphy)")
        engine_record = EngineRecord(
            producer=PRODUCER, schema=ENGINE_SCHEMA, vtp_export_version=__version__,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"), export=str(folder.resolve()),
            tensorrt=".".join(trt.__version__.split(".")[:2]), tensorrt_full=trt.__version__,
            gpu=GpuRecord(device.gpu_name, device.sm), jetpack=device.jetpack, target=target.name,
            precision=precision, engines=engines,
            export_verification={role: g.verification for role, g in record.graphs.items()},
            parity_with_onnxruntime=compare_engines(folder, stage, record),
        )
        write_json(stage / CONFIG_JSON, engine_record)
    return BuildOutcome(out, f"built {', '.join(e.file for e in engines.values())} in {out}")


def typed_precision(folder: Path, vision_file: str, target: Target, requested: str | None) -> str:
    """A strongly typed engine runs the precision its graph's types state: that one, which must be the one
    requested where one is."""
    if requested is not None:
        engine_precision(target, requested)
    precision = engine_precision(target, graph_precision(folder / vision_file))
    if requested is not None and requested != precision:
        raise UsageError(f"{folder / vision_file} is a {precision} graph and TensorRT {target.tensorrt_range} builds "
                         f"it strongly typed, in the graph's precision: export with --precision {requested}")
    return precision


def engine_files(folder: Path) -> list[str] | None:
    """What vtp-export build wrote in an engine folder, or None for a folder it did not write."""
    from vtp_export.errors import RecordError
    from vtp_export.records.engine import read_engine_record

    try:
        return [CONFIG_JSON, *(e.file for e in read_engine_record(folder).engines.values())]
    except RecordError:
        return None


def rewrite_recipe(folder: Path, target: Target, graphs: dict[str, GraphRecord], precision: str) -> None:
    """The device script and config.json for another precision, each replaced atomically: the record always
    says what the script builds. The build's section of config.json: device_build and each graph's
    float32_nodes (what the script pins)."""
    scratch = folder / f".{BUILD_SCRIPT}.partial"
    scratch.mkdir(exist_ok=True)
    try:
        commands = write_build_script(scratch, target, graphs.values(), precision)
        (scratch / BUILD_SCRIPT).replace(folder / BUILD_SCRIPT)
        update_export(folder, {("device_build",): DeviceBuild(BUILD_SCRIPT, precision, commands)} | {
            ("graphs", role, "float32_nodes"): graph.float32_nodes for role, graph in graphs.items()})
    finally:
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()


def build_engine(trt: ModuleType, onnx_path: Path, engine_path: Path, target: Target, precision: str,
                 graph: GraphRecord, cache_path: Path, progress: Progress) -> EngineFile:
    """Build one engine with the TensorRT Python API module `trt` (TensorRT, or TensorRT-RTX in tests).
    `graph.float32_nodes` are pinned to float32 in an fp16 engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT 8.x; implicit in 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if target.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    strongly_typed = target.strongly_typed and network.get_flag(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    parser = trt.OnnxParser(network, logger)
    with deferred_interrupt():
        parsed = parser.parse_from_file(str(onnx_path))
    if not parsed:
        errors = " | ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BuildError(f"TensorRT could not parse {onnx_path.name}: {errors[:500]}")
    config = builder.create_builder_config()
    if target.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, target.workspace_mib << 20)
    if hasattr(trt.BuilderFlag, "MONITOR_MEMORY"):  # TensorRT 10.6+
        config.set_flag(trt.BuilderFlag.MONITOR_MEMORY)
    pinned = 0
    if precision == "fp16" and not target.strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        wanted = set(graph.float32_nodes)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            # TensorRT names a node's layer after it; helper layers of the same node get suffixes.
            if layer.name in wanted or layer.name.rsplit("_", 1)[0] in wanted:
                layer.precision = trt.float32
                pinned += 1
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if graph.dynamic_batch:
        profile = builder.create_optimization_profile()
        for value in graph.inputs:
            dims = value.shape[1:]
            profile.set_shape(value.name, (1, *dims), (1, *dims), (MAX_DYNAMIC_BATCH, *dims))
        config.add_optimization_profile(profile)
    start = time.perf_counter()
    with deferred_interrupt() as interrupted:
        if hasattr(trt, "IProgressMonitor"):
            config.progress_monitor = progress_monitor(trt, progress, interrupted)
        serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BuildError(f"TensorRT could not build an engine from {onnx_path.name} (see the TensorRT log above)")
    engine_path.write_bytes(bytes(serialized))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    activation = activation_memory(trt, logger, bytes(serialized))
    size = engine_path.stat().st_size
    return EngineFile(
        file=engine_path.name, sha256=sha256(engine_path), bytes=size, onnx_sha256=graph.sha256,
        build_s=round(time.perf_counter() - start, 1), layers=network.num_layers, float32_layers=pinned,
        flags=EngineFlags(precision=precision, strongly_typed=strongly_typed, workspace_mib=target.workspace_mib,
                          dynamic_batch=graph.dynamic_batch,
                          max_batch=MAX_DYNAMIC_BATCH if graph.dynamic_batch else None, timing_cache=cache_path.name,
                          monitor_memory=hasattr(trt.BuilderFlag, "MONITOR_MEMORY")),
        activation_memory_bytes=activation,
        within_memory_budget=None if activation is None else size + activation <= target.memory_budget_mib << 20,
    )


def activation_memory(trt: ModuleType, logger, serialized: bytes) -> int | None:
    """Device memory the engine needs for its activations; None where it cannot be loaded (no GPU)."""
    try:
        engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
        return int(engine.device_memory_size_v2) if engine is not None else None
    except Exception:  # no CUDA device to deserialize on (TensorRT-RTX on a CPU-only machine)
        return None


def compare_engines(folder: Path, engines: Path, record: ExportRecord, samples: int = 3) -> dict[str, Parity]:
    """onnxruntime (fp32 graph) against each TensorRT engine on seeded random inputs, with Polygraphy."""
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    batch = record.graphs["vision"].batch or 1
    generator = np.random.default_rng(0)
    results = {}
    text_embeds = None
    for role in sorted(record.graphs, key=lambda r: r != "text"):  # text first: it feeds the vision graph
        graph = record.graphs[role]
        onnx_runner = OnnxrtRunner(SessionFromOnnx(str(folder / graph.file)))
        engine_runner = TrtRunner(EngineFromBytes((engines / engine_name(graph.file)).read_bytes()))
        overlap, worst = 1.0, 0.0
        with onnx_runner, engine_runner:
            for sample in range(samples):
                if role == "text":
                    feeds = {INPUT_IDS: random_input_ids(batch, graph.inputs[0].shape[1],
                                                         record.model.text_vocab_size, sample)}
                else:
                    shape = pixel_shape(record.model.geometry, batch)
                    feeds = {graph.inputs[0].name: generator.standard_normal(shape).astype(np.float32)}
                    if text_embeds is not None:
                        feeds[TEXT_EMBEDS] = text_embeds
                    if record.method.prompt_conditioned:
                        feeds[TEXT_EMBEDS] = random_prompt_embeds(batch, record.model.geometry.llm_width, sample)
                want, got = onnx_runner.infer(feeds), engine_runner.infer(feeds)
                if role == "text":
                    text_embeds = want[TEXT_EMBEDS]
                    worst = max(worst, float(np.abs(got[TEXT_EMBEDS] - want[TEXT_EMBEDS]).max()))
                    continue
                overlap = min(overlap, set_overlap(got[TOKEN_INDEX], want[TOKEN_INDEX]))
                have_at, want_at = matched_rows(got[TOKEN_INDEX], want[TOKEN_INDEX])
                if len(have_at[0]):
                    worst = max(worst, float(np.abs(got[IMAGE_EMBEDS][have_at] - want[IMAGE_EMBEDS][want_at]).max()))
        results[role] = Parity(samples=samples, max_abs_diff=worst, tolerance=FP16_TOLERANCE,
                               token_index_min_set_overlap=overlap if role == "vision" else None)
    return results
