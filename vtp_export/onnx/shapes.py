"""Static shapes of an ONNX graph, checked: what the exporter and the TensorRT lint require (torch-free, so
`vtp-export lint` runs on a device install)."""

import onnx

from vtp_export.errors import ExportError

BATCH_PROBE = 3  # batch size the shape check pins a dynamic batch axis to


def static_value_shapes(model: onnx.ModelProto, dynamic_batch: bool) -> dict[str, list[int]]:
    """Shape of every value; ExportError naming the producing node for any value whose shape is not static.

    A dynamic batch reaches Reshape targets through Shape ops, so the batch axis is pinned to a probe
    size first and shapes are inferred with data propagation: static-but-for-batch graphs resolve fully.
    """
    model = onnx.ModelProto.FromString(model.SerializeToString())
    if dynamic_batch:
        for value in model.graph.input:
            value.type.tensor_type.shape.dim[0].dim_value = BATCH_PROBE
        del model.graph.value_info[:]
    graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    shapes = {}
    for value in [*graph.input, *graph.output, *graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        for axis, dim in enumerate(dims):
            if not dim.HasField("dim_value"):
                producer = next((n for n in graph.node if value.name in n.output), None)
                source = f" (from node {producer.name!r}, {producer.op_type})" if producer else ""
                raise ExportError(f"graph value {value.name!r}{source} has a non-static axis {axis}")
        shapes[value.name] = [d.dim_value for d in dims]
    return shapes
