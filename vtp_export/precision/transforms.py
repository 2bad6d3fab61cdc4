"""Precision of the exported graphs: which precisions a target has, and the graph transforms that put a
precision into the ONNX graph itself, as strongly typed TensorRT (9+, TensorRT-RTX, TensorRT 11) needs.

fp16 / bf16: NVIDIA ModelOpt's ONNX AutoCast rewrites the verified fp32 graph to the low type, keeping
`float32_nodes` (the score path up to every TopK, LayerNorm and softmax statistics) float32 behind
explicit Casts; graph inputs and outputs stay float32. int8 / fp8: ModelOpt's ONNX post-training
quantization inserts Q/DQ nodes calibrated on images, with the same nodes excluded; what it leaves
unquantized is then lowered to fp16 the same way. Why AutoCast rather than casting the torch module:
README, "Precision".

TensorRT 8.5 (JetPack 5) has no strong typing: its engines get fp16 from builder flags and keep the
same `float32_nodes` float32 as per-layer precisions (trt/recipe.py, trt/builder.py).
"""

import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx

from vtp_export.errors import PrecisionError, UsageError
from vtp_export.records.graph import FlagPrecision, GraphPrecision, LoweredGraph, QuantizedGraph
from vtp_export.targets import Target
from vtp_export.util.quiet import quiet

LOW_PRECISIONS = ("fp16", "bf16")
QUANTIZED_PRECISIONS = ("int8", "fp8")
NORMALISATION_OPS = frozenset({"LayerNormalization", "Softmax", "ReduceMean", "ReduceL2", "Sqrt", "Pow", "Erf"})
# Module attributes in dynamo-exported graphs' namespaces: the pruning method's nodes (its projector excepted),
# and the towers' score modules (towers/*.py).
# The pruning stage: the method, the selection applied to the token streams, the model's token layout.
PRUNING_MODULES = frozenset({"method", "selection", "layout"})
PROJECTOR_MODULE = "projector"
SCORE_MODULES = frozenset({"scores", "next_scores"})
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# What a Q/DQ graph's unquantized remainder is lowered to: TensorRT's int8/fp8 kernels pair with fp16.
QUANTIZED_REMAINDER = "fp16"
QDQ_MIN_OPSET = 19  # ModelOpt writes Q/DQ at opset 19 (fp16 scales, fp8 types)
# ModelOpt logs every node it classifies and onnxruntime's calibrator draws progress bars.
MODELOPT_LOGGERS = ("", "modelopt", "modelopt.onnx", "modelopt.onnx.autocast")
MODELOPT_MISSING = "the precision transforms need NVIDIA ModelOpt: pip install 'vtp-export[precision]' (README, Precision)"
ONNX_TYPE_PRECISION = {
    onnx.TensorProto.FLOAT8E4M3FN: "fp8", onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.BFLOAT16: "bf16", onnx.TensorProto.FLOAT16: "fp16",
}


def engine_precision(target: Target, requested: str | None) -> str:
    """The precision to build with: the target's default, or `requested` after checking the target has it."""
    precision = requested or target.default_precision
    if precision not in target.precisions:
        raise UsageError(f"target {target.name} ({target.gpu_arch or target.runtime}) does not support {precision} "
                         f"(supports: {', '.join(target.precisions)})")
    return precision


def float32_nodes(path: Path) -> list[str]:
    """Names of the nodes a reduced-precision graph or engine runs in float32: normalisations everywhere, the
    scores the tower computes for the methods (the CLS attention row, the next layer's), and the pruning
    stage's scoring and selection (its projector excepted: plain matmuls on features)."""
    model = onnx.load(str(path), load_external_data=False)
    names = []
    for node in model.graph.node:
        namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        # ": pkg.VisionGraph/method: pkg.HoloV/method.projector: ..." -> ["method", "projector"]
        modules = [part.split(":")[0].rsplit(".", 1)[-1] for part in namespace.split("/")[1:]]
        in_pruning = bool(PRUNING_MODULES & set(modules)) and PROJECTOR_MODULE not in modules
        if in_pruning or SCORE_MODULES & set(modules) or node.op_type in NORMALISATION_OPS:
            names.append(node.name)
    return names


def graph_precision(path: Path) -> str:
    """The precision a strongly typed engine of this graph runs in: fp8 / int8 where it has Q/DQ nodes of that
    type, else bf16 / fp16 where its weights or Casts use that type, else fp32."""
    model = onnx.load(str(path), load_external_data=False)
    types = {t.data_type for t in model.graph.initializer}
    types |= {onnx.helper.get_attribute_value(a) for n in model.graph.node if n.op_type == "Cast"
              for a in n.attribute if a.name == "to"}
    has_qdq = any(n.op_type in QDQ_OPS for n in model.graph.node)
    for onnx_type, precision in ONNX_TYPE_PRECISION.items():
        if onnx_type in types and (has_qdq or precision in LOW_PRECISIONS):
            return precision
    return "fp32"


def apply_precision(path: Path, precision: str, target: Target, keep_float32: list[str],
                    calibration_feeds: list[dict[str, np.ndarray]] | None = None) -> GraphPrecision | None:
    """Rewrite the fp32 graph at `path` in place to `precision` for `target`; the record for config.json (None
    for fp32: nothing to do).

    keep_float32: float32_nodes(path) of the fp32 graph. calibration_feeds: int8 / fp8 only.
    """
    engine_precision(target, precision)
    if precision == "fp32":
        return None
    if not target.strongly_typed:
        if precision in QUANTIZED_PRECISIONS:
            raise UsageError(f"{precision} for TensorRT {target.tensorrt_range} needs a Q/DQ graph at opset "
                             f"{target.max_opset} or lower; ModelOpt writes opset {QDQ_MIN_OPSET}")
        return FlagPrecision(precision=precision, graph="fp32",
                             engine=f"weakly typed TensorRT {target.tensorrt_range}: precision from builder flags, "
                             "float32_nodes pinned per layer")
    if precision in LOW_PRECISIONS:
        return lower_precision(path, precision, keep_float32)
    if not calibration_feeds:
        raise UsageError(f"{precision} needs calibration images (--calibration DIR)")
    return quantize(path, precision, calibration_feeds, keep_float32)


def lower_precision(path: Path, precision: str, keep_float32: list[str]) -> LoweredGraph:
    """The graph at `path` (external data beside it) rewritten in place with ModelOpt AutoCast: weights and
    activations in `precision` (fp16 or bf16), the nodes named in `keep_float32` float32 behind Casts, graph
    inputs and outputs unchanged. The graph's opset is kept (bf16 Conv needs opset 22, above TensorRT 10.x's
    ceiling of 20, so a bf16 graph keeps its Conv in float32)."""
    if precision not in LOW_PRECISIONS:
        raise UsageError(f"lower_precision makes {' or '.join(LOW_PRECISIONS)} graphs, not {precision}")
    try:
        from modelopt.onnx.autocast import convert_to_mixed_precision
    except ImportError:
        raise PrecisionError(MODELOPT_MISSING) from None
    start = time.perf_counter()
    path = path.resolve()  # AutoCast runs in the graph's folder
    before = graph_bytes(path)
    opset = max(opset_of(path), QDQ_MIN_OPSET if has_qdq(path) else 0)
    graph = onnx.load(str(path), load_external_data=False)
    outputs = list(graph.graph.output)
    constants = {t.name: t for t in graph.graph.initializer if t.name in {o.name for o in outputs}}
    # AutoCast's clean-up drops graph outputs that are bare initializers (token_index of the data-independent
    # methods): it runs on a copy without them, and they are put back unchanged after.
    stripped = path.with_name(f".{path.name}.autocast")
    del graph.graph.output[:]
    graph.graph.output.extend(o for o in outputs if o.name not in constants)
    onnx.save(graph, str(stripped))  # external data stays referenced by name, beside it
    try:
        # onnx's checker resolves the external data of the weightless model from the working folder
        with quiet(MODELOPT_LOGGERS, stderr=True), weightless_autocast() as conversions, contextlib.chdir(path.parent):
            try:
                model = convert_to_mixed_precision(
                    str(stripped), low_precision_type=precision, nodes_to_exclude=exact_names(keep_float32),
                    keep_io_types=True, data_max=np.inf, opset=opset, use_standalone_type_inference=True)
            except Exception as error:  # ModelOpt raises assorted types
                raise PrecisionError(f"AutoCast could not make {path.name} {precision}: {first_line(error)}") from error
    finally:
        stripped.unlink(missing_ok=True)
    lowered = {o.name: o for o in model.graph.output}
    present = {t.name for t in model.graph.initializer}
    model.graph.initializer.extend(t for name, t in constants.items() if name not in present)
    del model.graph.output[:]
    model.graph.output.extend(lowered.get(o.name, o) for o in outputs)
    nodes = {n.name for n in model.graph.node}
    # AutoCast leaves the value shapes of its reference run (batch 1) behind, which a dynamic-batch graph's
    # other batch sizes contradict; runtimes infer them again.
    del model.graph.value_info[:]
    save_streamed(model, path, conversions)
    return LoweredGraph(
        precision=precision,
        tool=f"nvidia-modelopt {metadata.version('nvidia-modelopt')} ONNX AutoCast",
        float32_nodes=sum(name in nodes for name in keep_float32),
        casts=sum(n.op_type == "Cast" for n in model.graph.node),
        opset=opset,
        graph_bytes={"fp32": before, precision: graph_bytes(path)},
        seconds=round(time.perf_counter() - start, 2),
    )


def quantize(path: Path, precision: str, calibration_feeds: list[dict[str, np.ndarray]], exclude_nodes: list[str],
             remainder: str = QUANTIZED_REMAINDER) -> QuantizedGraph:
    """The fp32 graph at `path` rewritten in place with ModelOpt's ONNX post-training quantization: Q/DQ
    nodes of `precision` (int8 or fp8) calibrated on `calibration_feeds` (graph inputs by name, one dict a
    batch), the nodes named in `exclude_nodes` left unquantized; then the unquantized rest is lowered to
    `remainder` (fp16, bf16, or fp32 to keep it) with `exclude_nodes` float32."""
    if precision not in QUANTIZED_PRECISIONS:
        raise UsageError(f"quantize makes {' or '.join(QUANTIZED_PRECISIONS)} graphs, not {precision}")
    if not calibration_feeds:
        raise UsageError(f"{precision} quantization needs at least one calibration batch")
    try:
        from modelopt.onnx.quantization import quantize as modelopt_quantize
    except ImportError:
        raise PrecisionError(MODELOPT_MISSING) from None
    start = time.perf_counter()
    before = graph_bytes(path)
    calibration = {name: np.concatenate([feeds[name] for feeds in calibration_feeds])
                   for name in calibration_feeds[0]}
    # ModelOpt writes intermediate files beside its input: move the graph into a scratch folder for it.
    scratch = Path(tempfile.mkdtemp(prefix=".quantize-", dir=path.parent))
    moved = [(source, scratch / source.name) for source in (path, data_path(path)) if source.exists()]
    try:
        for source, destination in moved:
            source.replace(destination)
        quantized = scratch / f"{path.stem}.{precision}.onnx"
        with quiet(MODELOPT_LOGGERS, stderr=True):
            try:
                modelopt_quantize(
                    str(scratch / path.name), quantize_mode=precision, calibration_data=calibration,
                    calibration_eps=["cpu"], nodes_to_exclude=exact_names(exclude_nodes), high_precision_dtype="fp32",
                    use_external_data_format=True, output_path=str(quantized), log_level="ERROR")
            except Exception as error:
                raise PrecisionError(f"ModelOpt could not quantize {path.name} to {precision}: "
                                     f"{first_line(error)}") from error
        model = onnx.load(str(quantized))
    finally:
        for source, destination in moved:
            destination.replace(source)
        shutil.rmtree(scratch, ignore_errors=True)
    pairs = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    save_in_place(model, path)
    del model
    opset, seconds = opset_of(path), round(time.perf_counter() - start, 2)
    return QuantizedGraph(
        precision=precision,
        tool=f"nvidia-modelopt {metadata.version('nvidia-modelopt')} ONNX PTQ",
        quantized_tensors=pairs,
        calibration_batches=len(calibration_feeds),
        calibration_images=int(next(iter(calibration.values())).shape[0]),
        excluded_nodes=len(exclude_nodes),
        opset=opset,
        seconds=seconds,
        remainder=None if remainder == "fp32" else lower_precision(path, remainder, exclude_nodes),
        graph_bytes={"fp32": before, precision: graph_bytes(path)},
    )


def exact_names(names: list[str]) -> list[str]:
    """ModelOpt matches node names as regular expressions: match these names exactly."""
    return [f"^{re.escape(name)}$" for name in names]


def data_path(path: Path) -> Path:
    """The external-data file of a graph, as the exporter names it: vision.onnx -> vision.onnx.data."""
    return path.with_name(path.name + ".data")


CONVERSION_KEY = "vtp_export.conversion"  # marks an initializer AutoCast converted without its data


@contextlib.contextmanager
def weightless_autocast() -> Iterator[dict]:
    """AutoCast without the weights in memory. ModelOpt loads every weight and copies the whole model in
    each of its type-inference passes (7 GB peak for CLIP-L's 1.2 GB, 6x the weights): here it works on
    the graph with its weights left in the external data file, and the conversion of each weight it decides
    on is only recorded (the converted tensor keeps its source's location and carries CONVERSION_KEY);
    save_streamed then converts them one at a time, with ModelOpt's own conversion. Yields the recorded
    conversions (key -> (converter, from_type, to_type)). Written against nvidia-modelopt 0.47.0 (pinned)."""
    from modelopt.onnx.autocast.precisionconverter import PrecisionConverter

    convert = PrecisionConverter._convert_initializer_data
    load = onnx.external_data_helper.load_external_data_for_model
    conversions: dict[str, tuple] = {}

    def recorded(converter, init: onnx.TensorProto, from_type, to_type) -> onnx.TensorProto:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            return convert(converter, init, from_type, to_type)
        key = str(len(conversions))
        conversions[key] = (converter, from_type, to_type, init.data_type)
        converted = onnx.TensorProto()
        converted.CopyFrom(init)
        converted.data_type = to_type.onnx_type
        converted.external_data.add(key=CONVERSION_KEY, value=key)
        return converted

    PrecisionConverter._convert_initializer_data = recorded
    onnx.external_data_helper.load_external_data_for_model = lambda *args, **kwargs: None
    try:
        yield conversions
    finally:
        PrecisionConverter._convert_initializer_data = convert
        onnx.external_data_helper.load_external_data_for_model = load


def save_streamed(model: onnx.ModelProto, path: Path, conversions: dict) -> None:
    """Replace the graph at `path` and its external data with `model`, whose external initializers still
    point into the old data file: each is copied, or converted where weightless_autocast recorded a
    conversion, one tensor at a time into the new data file."""
    data = data_path(path)
    staged_graph, staged_data = path.with_name(f".{path.name}.partial"), data.with_name(f".{data.name}.partial")
    try:
        with data.open("rb") as source, staged_data.open("wb") as target:
            for tensor in model.graph.initializer:
                if tensor.data_location != onnx.TensorProto.EXTERNAL:
                    continue
                entries = {entry.key: entry.value for entry in tensor.external_data}
                source.seek(int(entries.get("offset", 0)))
                raw = source.read(int(entries["length"]))
                if CONVERSION_KEY in entries:
                    converter, from_type, to_type, source_type = conversions[entries[CONVERSION_KEY]]
                    original = onnx.helper.make_tensor(tensor.name, source_type, tensor.dims, raw, raw=True)
                    raw = type(converter)._convert_initializer_data(converter, original, from_type, to_type).raw_data
                offset = target.tell()
                target.write(raw)
                del tensor.external_data[:]
                for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(len(raw)))):
                    tensor.external_data.add(key=key, value=value)
        onnx.save(model, str(staged_graph))
        staged_data.replace(data)
        staged_graph.replace(path)
    finally:
        staged_graph.unlink(missing_ok=True)
        staged_data.unlink(missing_ok=True)


def save_in_place(model: onnx.ModelProto, path: Path) -> None:
    """Replace the graph at `path` and its external data with `model`."""
    data = data_path(path)
    onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))  # all weights in memory
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    staged = path.with_name(f".{path.name}.partial")
    onnx.save(model, str(staged), save_as_external_data=True, location=data.name)
    staged.replace(path)


def graph_bytes(path: Path) -> int:
    """Bytes of the graph on disk, its external data included (small constants live in the graph file)."""
    data = data_path(path)
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def opset_of(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def has_qdq(path: Path) -> bool:
    return any(n.op_type in QDQ_OPS for n in onnx.load(str(path), load_external_data=False).graph.node)


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


