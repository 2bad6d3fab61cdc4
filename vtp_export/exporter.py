"""The export job: checkpoint -> pruned vision graph -> verified ONNX folder (+ device build recipe)."""

import dataclasses
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch
import transformers

from vtp_export import __version__
from vtp_export.checkpoint import load_clip_text, load_vision_stack
from vtp_export.errors import UsageError
from vtp_export.graph_io import INPUT_IDS, PIXEL_VALUES, PRODUCER, TEXT_EMBEDS, TEXT_INPUTS, TEXT_ONNX, TEXT_OUTPUTS, VISION_ONNX
from vtp_export.memory import return_large_blocks_at_once
from vtp_export.lint import lint_graph
from vtp_export.methods import METHODS
from vtp_export.methods.base import PruningMethod
from vtp_export.models import MODELS
from vtp_export.models.base import VisionLanguageModel, VisionStack
from vtp_export.onnx_export import export_onnx
from vtp_export.output_folder import check_writable, staged_folder
from vtp_export.calibration import calibration_inputs
from vtp_export.fidelity import measure_fidelity
from vtp_export.precision import (
    LOW_PRECISIONS, QUANTIZED_PRECISIONS, apply_precision, engine_precision, float32_nodes,
)
from vtp_export.recipe import BUILD_SCRIPT, write_build_script
from vtp_export.records import (
    EXPORT_SCHEMA, DeviceBuild, ExportRecord, GraphRecord, MethodRecord, ModelRecord, TensorSpec, sha256, write_json,
)
from vtp_export.signature import graph_signature
from vtp_export.targets import TARGETS
from vtp_export.tensorrt_check import check_with_tensorrt_parser
from vtp_export.towers.clip import ClipTextEncoder
from vtp_export.random_inputs import Arrays, random_input_ids, verification_inputs
from vtp_export.verify import CANDIDATES_PER_SAMPLE, compare_with_onnxruntime, determined_references, torch_outputs
from vtp_export.vision_graph import VisionGraph
from vtp_export.weights import (
    RandomWeights, WeightsSource, locate_clip_weights, locate_weights, read_clip_config, read_model_config,
)

TENSORRT_CHECKS = ("parse", "build")
MAX_SEED = 2**63 - 1

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    model: str
    method: str
    target: str
    keep: int | None = None
    method_options: dict[str, str] = field(default_factory=dict)
    model_options: dict[str, str] = field(default_factory=dict)  # --grid, --image-size
    out: Path | None = None
    weights: Path | None = None
    text_weights: Path | None = None  # CLIP folder for text-conditioned methods
    random_weights: bool = False
    seed: int = 0
    batch: int = 1
    dynamic_batch: bool = False
    verify_samples: int = 3
    tensorrt_check: str = "parse"  # "build" also builds an engine with the CPU-only builder
    precision: str | None = None  # graph/engine precision; None: the target's default
    calibration: str | None = None  # int8/fp8: a folder of images, or "random" (random weights only)
    replace: bool = False  # replace an existing export folder even if it holds files vtp-export did not write


@dataclass
class WrittenGraph:
    """One exported graph and what its verification needs; the torch module is gone by then."""

    role: str  # "vision" or "text"
    path: Path
    inputs: list[Arrays]
    expected: list[Arrays]
    exact: list[bool] | None = None  # per sample: selection identical (default), else compared by set overlap
    passed_over: int = 0  # random samples not verified on: the selection sits within rounding of a tie there


@dataclass
class Plan:
    """Everything resolved from the request before any heavy work."""

    model: VisionLanguageModel
    method: PruningMethod
    config: Any
    model_options: dict[str, str]
    weights: WeightsSource
    clip_weights: WeightsSource | None
    out: Path


def name_part(name: str, options: dict[str, Any]) -> str:
    """'holov-variant-paper': a name with the options that set it apart, for folder names."""
    return "".join([name, *(f"-{k}-{v}" for k, v in sorted(options.items()))])


def default_out(request: ExportRequest, plan: Plan) -> Path:
    model_variant = {o.name: plan.model_options[o.name] for o in plan.model.options
                     if plan.model_options[o.name] != o.default}
    return Path("exports") / (f"{name_part(request.model, model_variant)}-{name_part(request.method, plan.method.variant())}"
                              f"-k{plan.method.tokens_per_image}-{request.target}")


def plan_export(request: ExportRequest) -> Plan:
    """Validate the whole request (names, ranges, options, weights' configs) before any heavy work."""
    model = MODELS.get(request.model)
    method_class: type[PruningMethod] = METHODS.get(request.method)
    target = TARGETS.get(request.target)
    model.check_method(method_class)
    if request.batch < 1:
        raise UsageError(f"--batch {request.batch} must be at least 1")
    if request.verify_samples < 1:
        raise UsageError("--verify-samples must be at least 1")
    if not 0 <= request.seed <= MAX_SEED:
        raise UsageError(f"--seed {request.seed} must be in 0..{MAX_SEED}")
    if request.tensorrt_check not in TENSORRT_CHECKS:
        raise UsageError(f"--tensorrt-check {request.tensorrt_check!r} is not one of {', '.join(TENSORRT_CHECKS)}")
    if request.precision is not None and not target.uses_tensorrt:
        raise UsageError(f"--precision is for TensorRT targets; {target.name} runs the fp32 graph in onnxruntime")
    if target.uses_tensorrt:
        precision = engine_precision(target, request.precision)
        if precision in QUANTIZED_PRECISIONS and target.strongly_typed and request.calibration is None:
            raise UsageError(f"{precision} is calibrated on images: pass --calibration DIR (a folder of images), or "
                             "--calibration random with --random-weights")
    if request.calibration is not None and not (target.uses_tensorrt and request.precision in QUANTIZED_PRECISIONS):
        raise UsageError("--calibration is for --precision int8 or fp8")
    if request.calibration == "random" and not (request.random_weights or MODELS.get(request.model).random_only):
        raise UsageError("--calibration random is only for --random-weights exports: calibrate real weights on a "
                         "folder of images (--calibration DIR)")
    if request.text_weights is not None and not method_class.text_conditioned:
        raise UsageError(f"--text-weights is for text-conditioned methods; {request.method} is not one")
    model_options = model.resolved_options(request.model_options)
    weights = locate_weights(model, request.weights, request.random_weights, request.seed)
    config = read_model_config(model, weights)
    geometry = model.geometry(config, model_options)
    method = method_class.create(geometry, request.keep, request.method_options)
    clip_weights = None
    if method.text_conditioned:
        clip_weights = locate_clip_weights(model, request.text_weights, weights)
        read_clip_config(model, clip_weights, config)
    plan = Plan(model, method, config, model_options, weights, clip_weights, Path())
    plan.out = request.out or default_out(request, plan)
    check_writable(plan.out, request.replace)
    return plan


def export(request: ExportRequest, progress: Progress = lambda _: None) -> Path:
    """Run the whole job; return the finished folder. Every failure is a VtpError, leaving nothing behind."""
    plan = plan_export(request)
    return_large_blocks_at_once()
    target = TARGETS.get(request.target)
    precision = engine_precision(target, request.precision) if target.uses_tensorrt else None
    with staged_folder(plan.out, request.replace) as stage:
        record, graphs = write_graphs(request, plan, stage, progress)
        # The torch weights are gone with write_graphs' frame: onnxruntime and TensorRT get that memory.
        for graph in graphs:
            progress(f"verifying {graph.path.name} in onnxruntime against PyTorch on {len(graph.inputs)} random batches")
            start = time.perf_counter()
            verification = dataclasses.replace(
                compare_with_onnxruntime(graph.path, graph.inputs, graph.expected, exact=graph.exact),
                near_tie_samples_passed_over=graph.passed_over)
            record.timings[f"verify_{graph.role}_s"] = round(time.perf_counter() - start, 2)
            keep_float32 = float32_nodes(graph.path) if target.uses_tensorrt else []
            transform = None
            if target.uses_tensorrt and precision != "fp32":
                start = time.perf_counter()
                transform = lower_graph(request, plan, graph, precision, keep_float32, progress)
                record.timings[f"precision_{graph.role}_s"] = round(time.perf_counter() - start, 2)
            entry = graph_record(stage, graph.path, request.dynamic_batch)
            entry.verification, entry.precision = verification, transform
            if target.uses_tensorrt:
                entry.lint = lint_graph(graph.path, target, request.dynamic_batch)
                entry.float32_nodes = keep_float32 if precision == "fp16" and not target.strongly_typed else []
                progress(f"checking {graph.path.name} with the TensorRT ONNX parser ({request.tensorrt_check})")
                start = time.perf_counter()
                entry.tensorrt_parser = check_with_tensorrt_parser(graph.path, request.tensorrt_check == "build")
                record.timings[f"tensorrt_check_{graph.role}_s"] = round(time.perf_counter() - start, 2)
            record.graphs[graph.role] = entry
        if target.uses_tensorrt:
            commands = write_build_script(stage, target, record.graphs.values(), precision)
            record.device_build = DeviceBuild(BUILD_SCRIPT, precision, commands)
        write_json(stage / "config.json", record)
    return plan.out


def lower_graph(request: ExportRequest, plan: Plan, graph: WrittenGraph, precision: str, keep_float32: list[str],
                progress: Progress) -> dict:
    """Put `precision` into the verified fp32 graph (strongly typed targets; a weakly typed one keeps the fp32
    graph and builds with flags) and measure its fidelity to the fp32 module on the verification inputs.
    The text graph is lowered, never quantized: int8/fp8 exports get an fp16 text graph."""
    target = TARGETS.get(request.target)
    graph_precision = precision if graph.role == "vision" or precision in LOW_PRECISIONS else "fp16"
    feeds = None
    if graph_precision in QUANTIZED_PRECISIONS:
        text = graph.inputs[0].get(TEXT_EMBEDS)
        feeds = calibration_inputs(request.calibration, plan.model, plan.method.geometry, graph.inputs[0][
            PIXEL_VALUES].shape[0], isinstance(plan.weights, RandomWeights), request.seed, text)
    progress(f"putting {graph_precision} into {graph.path.name}"
             + (f" (calibrated on {len(feeds)} batches)" if feeds else ""))
    transform = apply_precision(graph.path, graph_precision, target, keep_float32, feeds)
    if transform.get("graph", graph_precision) != "fp32":
        transform["fidelity"] = measure_fidelity(graph.path, graph_precision, graph.inputs, graph.expected)
    return transform


def write_graphs(request: ExportRequest, plan: Plan, stage: Path, progress: Progress) -> tuple[ExportRecord, list[WrittenGraph]]:
    """Load the weights, export the graphs, and return what verification needs: the inputs and torch outputs."""
    start = time.perf_counter()
    method, target = plan.method, TARGETS.get(request.target)
    progress(f"loading {request.model} weights from {plan.weights.describe()}")
    stack = load_stack(plan.model, plan.config, plan.model_options, plan.weights, plan.clip_weights)
    graph = VisionGraph(plan.model, stack, method)
    candidates = request.verify_samples * CANDIDATES_PER_SAMPLE
    vision_inputs = verification_inputs(stack.geometry, request.batch, candidates, seed=request.seed + 1)
    text_graph = None
    if method.text_conditioned:
        text_encoder = ClipTextEncoder(stack.clip)
        text_inputs = [{INPUT_IDS: random_input_ids(request.batch, stack.clip.max_length, stack.clip.vocab_size,
                                                    request.seed + i)}
                       for i in range(candidates)]
        text_outputs = torch_outputs(text_encoder, text_inputs, TEXT_OUTPUTS)
        text_graph = WrittenGraph("text", stage / TEXT_ONNX, text_inputs[:request.verify_samples],
                                  text_outputs[:request.verify_samples])
        for sample, text in zip(vision_inputs, text_outputs):
            sample[TEXT_EMBEDS] = text[TEXT_EMBEDS]
    references = determined_references(graph, vision_inputs, request.verify_samples, seed=request.seed)
    vision_graph = WrittenGraph("vision", stage / VISION_ONNX, references.inputs, references.expected,
                                references.exact, references.passed_over)
    load_s = round(time.perf_counter() - start, 2)

    progress(f"exporting {method.name} keep={method.keep} to ONNX (opset {target.opset})")
    start = time.perf_counter()
    primitive_layer_norm = "LayerNormalization" in target.unsupported_ops
    with torch.no_grad():
        vision_example = tuple(torch.from_numpy(a) for a in vision_graph.inputs[0].values())
        export_onnx(graph, vision_example, vision_graph.path, graph.input_names, method.output_names,
                    target.opset, request.dynamic_batch, primitive_layer_norm)
        if text_graph is not None:
            export_onnx(text_encoder, (torch.from_numpy(text_inputs[0][INPUT_IDS]),), text_graph.path, TEXT_INPUTS,
                        TEXT_OUTPUTS, target.opset, request.dynamic_batch, primitive_layer_norm)
    model = ModelRecord(
        name=request.model, weights=stack.source, options=plan.model_options, geometry=stack.geometry,
        vision_parameters_bytes_fp32=stack.parameter_bytes(),
    )
    if method.text_conditioned:
        model.text_weights = stack.clip.source
        model.text_max_length = stack.clip.max_length
        model.text_vocab_size = stack.clip.vocab_size
    record = ExportRecord(
        producer=PRODUCER, schema=EXPORT_SCHEMA, vtp_export_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), seed=request.seed, model=model,
        method=MethodRecord(method.name, method.reference, method.recorded_options(), method.variant(),
                            method.text_conditioned, method.exact_selection),
        keep=method.tokens_per_image, target=target, graphs={}, versions=versions(),
        timings={"load_and_reference_s": load_s, "export_s": round(time.perf_counter() - start, 2)},
    )
    return record, [vision_graph] + ([text_graph] if text_graph is not None else [])


def load_stack(model: VisionLanguageModel, config: Any, options: dict[str, str], weights: WeightsSource,
               clip_weights: WeightsSource | None) -> VisionStack:
    """The vision stack of `weights`, with CLIP's text side where `clip_weights` is given."""
    stack = load_vision_stack(model, config, options, weights)
    if clip_weights is not None:
        stack.clip = load_clip_text(model, config, clip_weights)
    return stack


def graph_record(folder: Path, onnx_path: Path, dynamic_batch: bool) -> GraphRecord:
    signature = graph_signature(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    data_files = sorted({entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                         if entry.key == "location"})
    return GraphRecord(
        file=onnx_path.name, sha256=sha256(onnx_path),
        external_data={name: sha256(folder / name) for name in data_files}, opset=signature["opset"],
        inputs=[TensorSpec(**v) for v in signature["inputs"]], outputs=[TensorSpec(**v) for v in signature["outputs"]],
        nodes=sum(signature["ops"].values()), dynamic_batch=dynamic_batch,
    )


def versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
