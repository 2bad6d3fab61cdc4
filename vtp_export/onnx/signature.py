"""A graph's signature: opset, I/O names, dtypes and shapes, and the histogram of its op types.

Checked-in signatures under graphs/ pin what each (model, method, keep) exports to (tests/goldens.py).
"""

from collections import Counter
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from vtp_export.errors import RecordError


def value_signature(value: onnx.ValueInfoProto) -> dict:
    tensor = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim]
    return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": shape}


def load_graph(path: Path) -> onnx.ModelProto:
    """The graph without its weights; RecordError for a file that is not a readable ONNX model."""
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, onnx.onnx_cpp2py_export.checker.ValidationError, ValueError) as error:
        raise RecordError(f"{path} is not a valid ONNX model (truncated or corrupt): {str(error)[:120]}") from None
    except OSError as error:
        raise RecordError(f"cannot read {path}: {error.strerror}") from None


def graph_signature(path: Path) -> dict:
    model = load_graph(path)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {
        "opset": opset,
        "inputs": [value_signature(v) for v in model.graph.input],
        "outputs": [value_signature(v) for v in model.graph.output],
        "ops": dict(sorted(Counter(node.op_type for node in model.graph.node).items())),
    }
