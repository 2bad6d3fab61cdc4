"""torch module -> ONNX graph with the dynamo exporter (fully static shapes, constant-K TopK)."""

import gc
from pathlib import Path

import onnx
import torch
from onnx import version_converter
from onnxscript import opset18 as op
from onnxscript.rewriter._matcher import SimplePatternMatcher

from vtp_export.errors import ExportError
from vtp_export.onnx.names import MAX_DYNAMIC_BATCH
from vtp_export.onnx.shapes import static_value_shapes
from vtp_export.util.quiet import quiet


def stable_sort_as_topk(self, stable: bool | None = None, dim: int = -1, descending: bool = False):
    """aten.sort.stable as one TopK over the whole axis with a constant K.

    ONNX TopK breaks ties by the lower index, which is what a stable sort guarantees, so the graph keeps
    the tie rule of the eager module. K is the axis length, static in every graph we export.
    """
    length = self.shape[dim]
    if not isinstance(length, int):
        raise ExportError(f"sort over an axis of dynamic length {length}: the graph would not be static")
    k = op.Constant(value_ints=[length])
    return op.TopK(self, k, axis=dim, largest=1 if descending else 0, sorted=1)


def layer_norm_as_primitives(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5, cudnn_enable: bool = True):
    """aten.layer_norm over the last axis as ReduceMean/Sub/Mul/Sqrt/Div, for TensorRT before 8.6
    (no LayerNormalization importer)."""
    if len(normalized_shape) != 1:
        raise ExportError("layer norm over more than the last axis has no primitive translation here")
    axes = op.Constant(value_ints=[-1])
    centered = op.Sub(x, op.ReduceMean(x, axes, keepdims=1))
    variance = op.ReduceMean(op.Mul(centered, centered), axes, keepdims=1)
    normalised = op.Div(centered, op.Sqrt(op.Add(variance, op.CastLike(op.Constant(value_float=eps), x))))
    if weight is not None:
        normalised = op.Mul(normalised, weight)
    if bias is not None:
        normalised = op.Add(normalised, bias)
    return normalised


DYNAMO_MIN_OPSET = 18  # the dynamo exporter's lowest opset; older targets get a converted graph

CUSTOM_TRANSLATIONS = {torch.ops.aten.sort.stable: stable_sort_as_topk}
PRIMITIVE_LAYER_NORM = {torch.ops.aten.layer_norm.default: layer_norm_as_primitives}


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    opset: int,
    dynamic_batch: bool,
    primitive_layer_norm: bool = False,
) -> None:
    """Write `path` (+ `path.data` with the weights). Raises ExportError with the exporter's own summary.

    primitive_layer_norm: layer norms as elementary ops instead of LayerNormalization (TensorRT 8.5).
    """
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
        dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    with quiet(("torch.onnx", "onnxscript", "onnx_ir")):
        try:
            program = torch.onnx.export(
                module, example_inputs, dynamo=True, opset_version=max(opset, DYNAMO_MIN_OPSET),
                input_names=list(input_names), output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                custom_translation_table=CUSTOM_TRANSLATIONS | (PRIMITIVE_LAYER_NORM if primitive_layer_norm else {}),
                optimize=True, verbose=False,
            )
        except Exception as error:  # the exporter wraps every failure in its own types
            raise ExportError(f"ONNX export failed: {first_line(error)}") from error
    program.save(str(path), external_data=True)
    del program
    release_rewriter_matches()
    if opset < DYNAMO_MIN_OPSET:
        convert_opset(path, opset)
    check_static_shapes(path, dynamic_batch)


def convert_opset(path: Path, opset: int) -> None:
    """Rewrite the graph at `path` (and its external data) at an older opset with onnx's version converter."""
    model = version_converter.convert_version(onnx.load(str(path)), opset)
    # The converter leaves opset-18 Reduce* attributes behind; at the default value they mean nothing older.
    for node in model.graph.node:
        if node.op_type.startswith("Reduce") and node.op_type != "ReduceSum":
            for a in list(node.attribute):
                if a.name == "noop_with_empty_axes":
                    if onnx.helper.get_attribute_value(a):
                        raise ExportError(f"{node.name}: noop_with_empty_axes=1 has no opset-{opset} form")
                    node.attribute.remove(a)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        raise ExportError(f"the graph has no valid opset-{opset} form: {first_line(error)}") from None
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, location=data.name)


def release_rewriter_matches() -> None:
    """Drop the last match that onnxscript's module-level rewrite rules keep (onnxscript 0.7).

    Through it they hold the whole exported graph and every weight, which would double the peak memory
    of verification. tests/test_onnx_export.py checks that the module's weights are freed after export.
    """
    for obj in gc.get_objects():
        if isinstance(obj, SimplePatternMatcher):
            for attribute in ("_current_node", "_match", "_graph"):
                if hasattr(obj, attribute):
                    setattr(obj, attribute, None)
    gc.collect()


def check_static_shapes(path: Path, dynamic_batch: bool) -> None:
    """Every value in the graph has a concrete shape, the leading (batch) axis of a dynamic graph aside."""
    model = onnx.load(str(path), load_external_data=False)
    static_value_shapes(model, dynamic_batch)
    for node in model.graph.node:
        if node.op_type == "NonZero":
            raise ExportError(f"graph has a NonZero node ({node.name}): data-dependent shape")


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
