"""torch module -> ONNX graph with the dynamo exporter (fully static shapes, constant-K TopK)."""

import contextlib
import gc
import io
import logging
import warnings
from pathlib import Path

import onnx
import torch
from onnxscript import opset18 as op
from onnxscript.rewriter._matcher import SimplePatternMatcher

from vtp_export.errors import ExportError


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


BATCH_PROBE = 3  # batch size the shape check pins a dynamic batch axis to

CUSTOM_TRANSLATIONS = {torch.ops.aten.sort.stable: stable_sort_as_topk}


def export_onnx(
    module: torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    path: Path,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    opset: int,
    dynamic_batch: bool,
) -> None:
    """Write `path` (+ `path.data` with the weights). Raises ExportError with the exporter's own summary."""
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=64)
        dynamic_shapes = tuple({0: batch} for _ in example_inputs)
    with quiet_exporter():
        try:
            program = torch.onnx.export(
                module, example_inputs, dynamo=True, opset_version=opset,
                input_names=list(input_names), output_names=list(output_names),
                dynamic_shapes=dynamic_shapes, custom_translation_table=CUSTOM_TRANSLATIONS,
                optimize=True, verbose=False,
            )
        except Exception as error:  # the exporter wraps every failure in its own types
            raise ExportError(f"ONNX export failed: {first_line(error)}") from error
    program.save(str(path), external_data=True)
    del program
    release_rewriter_matches()
    check_static_shapes(path, dynamic_batch)


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
    """Every value in the graph has a concrete shape, the leading (batch) axis of a dynamic graph aside.

    A dynamic batch reaches Reshape targets through Shape ops, so the batch axis is pinned to a probe
    size first and shapes are inferred with data propagation: static-but-for-batch graphs resolve fully.
    """
    model = onnx.load(str(path), load_external_data=False)
    if dynamic_batch:
        for value in model.graph.input:
            value.type.tensor_type.shape.dim[0].dim_value = BATCH_PROBE
        del model.graph.value_info[:]
    graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value"):
                raise ExportError(f"graph value {value.name!r} has a non-static axis {axis}")
    for node in graph.node:
        if node.op_type == "NonZero":
            raise ExportError(f"graph has a NonZero node ({node.name}): data-dependent shape")


def first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


@contextlib.contextmanager
def quiet_exporter():
    """The dynamo exporter prints progress to stdout and warns freely; keep the CLI's output ours."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
        previous = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, previous):
                logger.setLevel(level)
