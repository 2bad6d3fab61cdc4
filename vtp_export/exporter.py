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
from vtp_export.checkpoint import load_checkpoint, locate_weights, read_llava_config
from vtp_export.encoder import PrunedVisionEncoder
from vtp_export.errors import UsageError
from vtp_export.graph_io import CONFIG_JSON, PRODUCER, VISION_INPUTS, VISION_ONNX, VISION_OUTPUTS
from vtp_export.methods import METHODS
from vtp_export.methods.base import PruningMethod
from vtp_export.models import MODELS, geometry_of, random_vision_stack
from vtp_export.onnx_export import export_onnx
from vtp_export.output_folder import check_writable, staged_folder
from vtp_export.recipe import BUILD_SCRIPT, write_build_script
from vtp_export.signature import graph_signature
from vtp_export.targets import TARGETS
from vtp_export.tensorrt_check import check_with_tensorrt_parser
from vtp_export.verify import Outputs, compare_with_onnxruntime, torch_outputs, verification_inputs

MAX_DYNAMIC_BATCH = 64
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
    random_weights: bool = False
    seed: int = 0
    batch: int = 1
    dynamic_batch: bool = False
    verify_samples: int = 3
    tensorrt_check: str = "parse"  # "build" also builds an engine with the CPU-only builder


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
    folder = locate_weights(spec, request.weights, request.random_weights)
    config = spec.make_config() if folder is None else read_llava_config(folder)
    method = method_class.create(geometry_of(config), request.keep, request.method_options)
    out = request.out or default_out(request, method.keep)
    check_writable(out)

    with staged_folder(out) as stage:
        onnx_path = stage / VISION_ONNX
        record, inputs, expected = write_graph(request, config, folder, method, onnx_path, target.opset, progress)
        # The torch weights are gone with write_graph's frame: onnxruntime and TensorRT get that memory.
        progress(f"verifying onnxruntime against PyTorch on {len(inputs)} random batches")
        start = time.perf_counter()
        record["verification"] = compare_with_onnxruntime(onnx_path, inputs, expected)
        record["timings"]["verify_s"] = round(time.perf_counter() - start, 2)
        record["graph"] = graph_record(stage, onnx_path, request.dynamic_batch)
        record["target"] = target.as_record()
        if target.uses_tensorrt:
            progress(f"checking the graph with the TensorRT ONNX parser ({request.tensorrt_check})")
            start = time.perf_counter()
            record["tensorrt_parser"] = check_with_tensorrt_parser(onnx_path, request.tensorrt_check == "build")
            record["timings"]["tensorrt_check_s"] = round(time.perf_counter() - start, 2)
            pixel_shape = record["graph"]["inputs"][0]["shape"]
            command = write_build_script(stage, target, pixel_shape, request.dynamic_batch, MAX_DYNAMIC_BATCH)
            record["device_build"] = {"script": BUILD_SCRIPT, "command": command}
        (stage / CONFIG_JSON).write_text(json.dumps(record, indent=2) + "\n")
    return out


def write_graph(request: ExportRequest, config: LlavaConfig, folder: Path | None, method: PruningMethod,
                onnx_path: Path, opset: int, progress: Progress) -> tuple[dict, list[torch.Tensor], list[Outputs]]:
    """Load the weights, export the graph, and return what verification needs: the inputs and torch outputs."""
    start = time.perf_counter()
    progress(f"loading {request.model} weights from {folder or f'random init (seed {request.seed})'}")
    stack = random_vision_stack(config, request.seed) if folder is None else load_checkpoint(folder, config)
    encoder = PrunedVisionEncoder(stack, method)
    inputs = verification_inputs(stack.geometry, request.batch, request.verify_samples, seed=request.seed + 1)
    expected = torch_outputs(encoder, inputs)
    load_s = round(time.perf_counter() - start, 2)

    progress(f"exporting {method.name} keep={method.keep} to ONNX (opset {opset})")
    start = time.perf_counter()
    with torch.no_grad():
        export_onnx(encoder, (inputs[0],), onnx_path, VISION_INPUTS, VISION_OUTPUTS, opset, request.dynamic_batch)
    record = {
        "producer": PRODUCER,
        "vtp_export_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": request.model, "weights": stack.source, "geometry": asdict(stack.geometry),
                  "vision_parameters_bytes_fp32": stack.parameter_bytes()},
        "method": {"name": method.name, "reference": method.reference, "options": method.recorded_options()},
        "keep": method.keep,
        "versions": versions(),
        "timings": {"load_and_reference_s": load_s, "export_s": round(time.perf_counter() - start, 2)},
    }
    return record, inputs, expected


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
