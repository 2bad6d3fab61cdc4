"""The export job: checkpoint -> pruned vision graph -> verified ONNX folder (+ device build recipe)."""

import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import onnx
import onnxruntime
import torch
import transformers
from transformers import LlavaConfig

from vtp_export import __version__
from vtp_export.checkpoint import (
    load_checkpoint, load_clip_text, locate_clip_weights, locate_weights, read_clip_config, read_llava_config,
)
from vtp_export.encoder import ClipTextEncoder, PrunedVisionEncoder
from vtp_export.errors import UsageError
from vtp_export.graph_io import (
    CONFIG_JSON, INPUT_IDS, PRODUCER, TEXT_EMBEDS, TEXT_INPUTS, TEXT_ONNX, TEXT_OUTPUTS, VISION_ONNX,
)
from vtp_export.methods import METHODS
from vtp_export.methods.base import PruningMethod
from vtp_export.models import MODELS, VisionStack, geometry_of, random_clip_text, random_vision_stack
from vtp_export.onnx_export import MAX_DYNAMIC_BATCH, export_onnx
from vtp_export.output_folder import check_writable, staged_folder
from vtp_export.recipe import BUILD_SCRIPT, write_build_script
from vtp_export.signature import graph_signature
from vtp_export.lint import lint_graph
from vtp_export.precision import engine_precision, float32_nodes
from vtp_export.targets import TARGETS, Target
from vtp_export.tensorrt_check import check_with_tensorrt_parser
from vtp_export.verify import (
    Arrays, compare_with_onnxruntime, random_input_ids, torch_outputs, verification_inputs,
)

TENSORRT_CHECKS = ("parse", "build")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportRequest:
    model: str
    method: str
    target: str
    keep: int | None = None
    method_options: dict[str, str] = field(default_factory=dict)
    out: Path | None = None
    weights: Path | None = None
    text_weights: Path | None = None  # CLIP folder for text-conditioned methods
    random_weights: bool = False
    seed: int = 0
    batch: int = 1
    dynamic_batch: bool = False
    verify_samples: int = 3
    tensorrt_check: str = "parse"  # "build" also builds an engine with the CPU-only builder
    precision: str | None = None  # engine precision; None: the target's default


@dataclass
class WrittenGraph:
    """One exported graph and what its verification needs; the torch module is gone by then."""

    role: str  # "vision" or "text"
    path: Path
    inputs: list[Arrays]
    expected: list[Arrays]
    exact_selection: bool = True


def default_out(request: ExportRequest, keep: int) -> Path:
    return Path("exports") / f"{request.model}-{request.method}-k{keep}-{request.target}"


def export(request: ExportRequest, progress: Progress = lambda _: None) -> Path:
    """Run the whole job; return the finished folder. Every failure is a VtpError, leaving nothing behind."""
    spec = MODELS.get(request.model)
    method_class: type[PruningMethod] = METHODS.get(request.method)
    target = TARGETS.get(request.target)
    if request.batch < 1:
        raise UsageError(f"--batch {request.batch} must be at least 1")
    if request.verify_samples < 1:
        raise UsageError("--verify-samples must be at least 1")
    if request.tensorrt_check not in TENSORRT_CHECKS:
        raise UsageError(f"--tensorrt-check {request.tensorrt_check!r} is not one of {', '.join(TENSORRT_CHECKS)}")
    if request.precision is not None and not target.uses_tensorrt:
        raise UsageError(f"--precision is for TensorRT targets; {target.name} runs the fp32 graph in onnxruntime")
    precision = engine_precision(target, request.precision) if target.uses_tensorrt else None
    if request.text_weights is not None and not method_class.text_conditioned:
        raise UsageError(f"--text-weights is for text-conditioned methods; {request.method} is not one")
    folder = locate_weights(spec, request.weights, request.random_weights)
    config = spec.make_config() if folder is None else read_llava_config(folder)
    method = method_class.create(geometry_of(config), request.keep, request.method_options)
    clip_folder = None
    if method.text_conditioned:
        clip_folder = locate_clip_weights(spec, request.text_weights, folder, request.random_weights)
        if clip_folder is not None:
            read_clip_config(clip_folder, config)
    out = request.out or default_out(request, method.keep)
    check_writable(out)

    with staged_folder(out) as stage:
        record, graphs = write_graphs(request, config, folder, clip_folder, method, stage, target, progress)
        # The torch weights are gone with write_graphs' frame: onnxruntime and TensorRT get that memory.
        record["graphs"] = {}
        for graph in graphs:
            progress(f"verifying {graph.path.name} in onnxruntime against PyTorch on {len(graph.inputs)} random batches")
            start = time.perf_counter()
            entry = graph_record(stage, graph.path, request.dynamic_batch)
            if target.uses_tensorrt:
                entry["lint"] = lint_graph(graph.path, target, request.dynamic_batch)
                entry["float32_nodes"] = float32_nodes(graph.path) if precision == "fp16" else []
            entry["verification"] = compare_with_onnxruntime(
                graph.path, graph.inputs, graph.expected, exact_selection=graph.exact_selection)
            record["timings"][f"verify_{graph.role}_s"] = round(time.perf_counter() - start, 2)
            if target.uses_tensorrt:
                progress(f"checking {graph.path.name} with the TensorRT ONNX parser ({request.tensorrt_check})")
                start = time.perf_counter()
                entry["tensorrt_parser"] = check_with_tensorrt_parser(graph.path, request.tensorrt_check == "build")
                record["timings"][f"tensorrt_check_{graph.role}_s"] = round(time.perf_counter() - start, 2)
            record["graphs"][graph.role] = entry
        record["target"] = target.as_record()
        if target.uses_tensorrt:
            recipe = {graph.path.name: record["graphs"][graph.role] for graph in graphs}
            commands = write_build_script(stage, target, recipe, request.dynamic_batch, MAX_DYNAMIC_BATCH, precision)
            record["device_build"] = {"script": BUILD_SCRIPT, "precision": precision, "commands": commands}
        (stage / CONFIG_JSON).write_text(json.dumps(record, indent=2) + "\n")
    return out


def write_graphs(request: ExportRequest, config: LlavaConfig, folder: Path | None, clip_folder: Path | None,
                 method: PruningMethod, stage: Path, target: Target, progress: Progress) -> tuple[dict, list[WrittenGraph]]:
    """Load the weights, export the graphs, and return what verification needs: the inputs and torch outputs."""
    start = time.perf_counter()
    progress(f"loading {request.model} weights from {folder or f'random init (seed {request.seed})'}")
    stack = load_stack(request.model, config, folder, clip_folder, method.text_conditioned, request.seed)
    encoder = PrunedVisionEncoder(stack, method)
    vision_inputs = verification_inputs(stack.geometry, request.batch, request.verify_samples, seed=request.seed + 1)
    text_graph = None
    if method.text_conditioned:
        text_encoder = ClipTextEncoder(stack.clip)
        text_inputs = [{INPUT_IDS: random_input_ids(request.batch, stack.clip.max_length,
                                                    stack.clip.config.text_config.vocab_size, request.seed + i)}
                       for i in range(request.verify_samples)]
        text_graph = WrittenGraph("text", stage / TEXT_ONNX, text_inputs,
                                  torch_outputs(text_encoder, text_inputs, TEXT_OUTPUTS))
        for sample, text in zip(vision_inputs, text_graph.expected):
            sample[TEXT_EMBEDS] = text[TEXT_EMBEDS]
    vision_graph = WrittenGraph("vision", stage / VISION_ONNX, vision_inputs,
                                torch_outputs(encoder, vision_inputs, method.output_names), method.exact_selection)
    load_s = round(time.perf_counter() - start, 2)

    progress(f"exporting {method.name} keep={method.keep} to ONNX (opset {target.opset})")
    start = time.perf_counter()
    primitive_layer_norm = "LayerNormalization" in target.unsupported_ops
    with torch.no_grad():
        vision_example = tuple(torch.from_numpy(a) for a in vision_inputs[0].values())
        export_onnx(encoder, vision_example, vision_graph.path, encoder.input_names, method.output_names,
                    target.opset, request.dynamic_batch, primitive_layer_norm)
        if text_graph is not None:
            export_onnx(text_encoder, (torch.from_numpy(text_inputs[0][INPUT_IDS]),), text_graph.path, TEXT_INPUTS,
                        TEXT_OUTPUTS, target.opset, request.dynamic_batch, primitive_layer_norm)
    record = {
        "producer": PRODUCER,
        "vtp_export_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": request.model, "weights": stack.source, "random_weights": folder is None,
                  "seed": request.seed, "geometry": asdict(stack.geometry),
                  "vision_parameters_bytes_fp32": stack.parameter_bytes()},
        "method": {"name": method.name, "reference": method.reference, "options": method.recorded_options(),
                   "text_conditioned": method.text_conditioned, "exact_selection": method.exact_selection},
        "keep": method.keep,
        "versions": versions(),
        "timings": {"load_and_reference_s": load_s, "export_s": round(time.perf_counter() - start, 2)},
    }
    if method.text_conditioned:
        record["model"]["text_weights"] = stack.clip.source
        record["model"]["text_max_length"] = stack.clip.max_length
        record["model"]["text_vocab_size"] = stack.clip.config.text_config.vocab_size
    return record, [vision_graph] + ([text_graph] if text_graph is not None else [])


def load_stack(model: str, config: LlavaConfig, folder: Path | None, clip_folder: Path | None,
               with_clip: bool, seed: int) -> VisionStack:
    """The vision stack of `folder` (random with `seed` where None), with CLIP's text side if asked."""
    stack = random_vision_stack(config, seed) if folder is None else load_checkpoint(folder, config)
    if with_clip:
        stack.clip = (random_clip_text(MODELS.get(model).make_clip_config(), seed) if clip_folder is None
                      else load_clip_text(clip_folder, config))
    return stack


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_record(folder: Path, onnx_path: Path, dynamic_batch: bool) -> dict:
    signature = graph_signature(onnx_path)
    model = onnx.load(str(onnx_path), load_external_data=False)
    data_files = sorted({entry.value for tensor in model.graph.initializer for entry in tensor.external_data
                         if entry.key == "location"})
    return {
        "file": onnx_path.name,
        "sha256": sha256(onnx_path),
        "external_data": {name: sha256(folder / name) for name in data_files},
        "opset": signature["opset"],
        "inputs": signature["inputs"],
        "outputs": signature["outputs"],
        "nodes": sum(signature["ops"].values()),
        "dynamic_batch": dynamic_batch,
    }


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
