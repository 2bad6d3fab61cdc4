"""The export job: load the weights, build the vision graph, export it to ONNX, verify it against PyTorch in
onnxruntime, lower its precision, lint it and check it with TensorRT's parser, write the folder whole or not at all."""

import dataclasses
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import onnx
import onnxruntime
import torch
import transformers

from vtp_export import __version__
from vtp_export.checkpoint.load import load_stack
from vtp_export.contract import RandomWeights
from vtp_export.export.graph import VisionGraph
from vtp_export.export.plan import ExportRequest, Plan, Progress, plan_export
from vtp_export.export.runtime_files import write_runtime_files
from vtp_export.export.verify import (
    CANDIDATES_PER_SAMPLE, compare_with_onnxruntime, determined_references, torch_outputs,
)
from vtp_export.onnx.export import export_onnx
from vtp_export.onnx.inputs import Arrays, random_input_ids, random_prompt_embeds, verification_inputs
from vtp_export.onnx.names import (
    INPUT_IDS, PIXEL_VALUES, PRODUCER, TEXT_EMBEDS, TEXT_INPUTS, TEXT_ONNX, TEXT_OUTPUTS, VISION_ONNX,
)
from vtp_export.onnx.signature import graph_signature
from vtp_export.precision.calibration import calibration_inputs
from vtp_export.precision.fidelity import measure_fidelity
from vtp_export.precision.transforms import (
    LOW_PRECISIONS, QUANTIZED_PRECISIONS, apply_precision, engine_precision, float32_nodes,
)
from vtp_export.records.codec import sha256, write_json
from vtp_export.records.export import (
    EXPORT_SCHEMA, DeviceBuild, ExportRecord, GraphRecord, MethodRecord, ModelRecord, TensorSpec,
)
from vtp_export.records.folder import staged_folder
from vtp_export.records.graph import GraphPrecision, LoweredGraph, QuantizedGraph
from vtp_export.targets import TARGETS
from vtp_export.towers.clip import ClipTextEncoder
from vtp_export.trt.lint import lint_graph
from vtp_export.trt.parser import check_with_tensorrt_parser
from vtp_export.trt.recipe import BUILD_SCRIPT, write_build_script
from vtp_export.util.memory import return_large_blocks_at_once


@dataclass
class WrittenGraph:
    """One exported graph and what its verification needs; the torch module is gone by then."""

    role: str  # "vision" or "text"
    path: Path
    inputs: list[Arrays]
    expected: list[Arrays]
    exact: list[bool] | None = None  # per sample: selection identical (default), else compared by set overlap
    passed_over: int = 0  # random samples not verified on: the selection sits within rounding of a tie there


def export(request: ExportRequest, progress: Progress = lambda _: None) -> Path:
    """Run the whole job; return the finished folder. Every failure is a VtpError, leaving nothing behind."""
    plan = plan_export(request)
    return_large_blocks_at_once()
    target = TARGETS.get(request.target)
    toolchain = target.toolchain
    precision = engine_precision(target, request.precision) if toolchain.lowers_precision else None
    with staged_folder(plan.out, request.replace) as stage:
        record, graphs = write_graphs(request, plan, stage, progress)
        # The torch weights are gone with write_graphs' frame: onnxruntime and TensorRT get that memory.
        for graph in graphs:
            progress(f"verifying {graph.path.name} in onnxruntime against PyTorch on {len(graph.inputs)} random "
                     "batches")
            start = time.perf_counter()
            verification = dataclasses.replace(
                compare_with_onnxruntime(graph.path, graph.inputs, graph.expected, exact=graph.exact),
                near_tie_samples_passed_over=graph.passed_over)
            record.timings[f"verify_{graph.role}_s"] = round(time.perf_counter() - start, 2)
            keep_float32 = float32_nodes(graph.path) if toolchain.lowers_precision else []
            transform = None
            if toolchain.lowers_precision and precision != "fp32":
                start = time.perf_counter()
                transform = lower_graph(request, plan, graph, precision, keep_float32, progress)
                record.timings[f"precision_{graph.role}_s"] = round(time.perf_counter() - start, 2)
            entry = graph_record(stage, graph.path, request.dynamic_batch)
            entry.verification, entry.precision = verification, transform
            entry.float32_nodes = keep_float32 if precision == "fp16" and not target.strongly_typed else []
            if toolchain.lints:
                entry.lint = lint_graph(graph.path, target, request.dynamic_batch)
            if toolchain.parser_check:
                progress(f"checking {graph.path.name} with the TensorRT ONNX parser ({request.tensorrt_check})")
                start = time.perf_counter()
                entry.tensorrt_parser = check_with_tensorrt_parser(graph.path, request.tensorrt_check == "build")
                record.timings[f"tensorrt_check_{graph.role}_s"] = round(time.perf_counter() - start, 2)
            record.graphs[graph.role] = entry
        if toolchain.writes_recipe:
            commands = write_build_script(stage, target, record.graphs.values(), precision)
            record.device_build = DeviceBuild(BUILD_SCRIPT, precision, commands)
        write_json(stage / "config.json", record)
    return plan.out


def lower_graph(request: ExportRequest, plan: Plan, graph: WrittenGraph, precision: str, keep_float32: list[str],
                progress: Progress) -> GraphPrecision | None:
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
    if isinstance(transform, (LoweredGraph, QuantizedGraph)):
        transform = dataclasses.replace(
            transform, fidelity=measure_fidelity(graph.path, graph_precision, graph.inputs, graph.expected))
    return transform


def write_graphs(request: ExportRequest, plan: Plan, stage: Path,
                 progress: Progress) -> tuple[ExportRecord, list[WrittenGraph]]:
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
    if method.prompt_conditioned:  # no text graph: the runtime computes the prompt's mean LLM embedding
        for i, sample in enumerate(vision_inputs):
            sample[TEXT_EMBEDS] = random_prompt_embeds(request.batch, stack.geometry.llm_width, request.seed + i)
    references = determined_references(graph, vision_inputs, request.verify_samples, seed=request.seed)
    vision_graph = WrittenGraph("vision", stage / VISION_ONNX, references.inputs, references.expected,
                                references.exact, references.passed_over)
    load_s = round(time.perf_counter() - start, 2)

    progress(f"exporting {method.name} {method.keep_summary} to ONNX (opset {target.opset})")
    start = time.perf_counter()
    primitive_layer_norm = "LayerNormalization" in target.unsupported_ops
    with torch.no_grad():
        vision_example = tuple(torch.from_numpy(a) for a in vision_graph.inputs[0].values())
        export_onnx(graph, vision_example, vision_graph.path, graph.input_names, graph.output_names,
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
                            method.text_conditioned, method.exact_selection, method.prompt_conditioned),
        keep=method.tokens_per_image, target=target, graphs={}, versions=versions(),
        timings={"load_and_reference_s": load_s, "export_s": round(time.perf_counter() - start, 2)},
        runtime_files=write_runtime_files(stage, plan.model, plan.config, stack.source,
                                          stack.clip.source if method.text_conditioned else None,
                                          stack.clip.vocab_size if method.text_conditioned else None),
    )
    return record, [vision_graph] + ([text_graph] if text_graph is not None else [])


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
