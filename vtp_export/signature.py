"""A graph's signature: opset, I/O names, dtypes and shapes, and the histogram of its op types.

Checked-in signatures under graphs/ pin what each (model, method, keep) exports to; tests compare.
"""

import json
from collections import Counter
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from vtp_export.errors import RecordError

GRAPHS_DIR = Path(__file__).resolve().parent.parent / "graphs"
# Every registered method has a golden signature for this model at this keep (`none` at its own N),
# and so do the method variants whose graphs differ in structure.
GOLDEN_MODEL = "llava15-tiny"
GOLDEN_MODELS = (GOLDEN_MODEL, "qwen2.5-vl-tiny")  # each with every method that applies to it, at its defaults
GOLDEN_KEEP = 64
GOLDEN_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "holov-paper": ("holov", {"variant": "paper"}),
    "trim-iqr": ("trim", {"count": "iqr"}),
}


def golden_exports(methods: list[str], model: str = GOLDEN_MODEL) -> dict[str, tuple[str, dict[str, str]]]:
    """Golden name -> (method, method options), for the registered `methods` and the variants above that apply
    to `model`."""
    from vtp_export.methods import METHODS
    from vtp_export.models import MODELS

    signals = MODELS.get(model).signals
    exports = {name: (name, {}) for name in methods} | GOLDEN_VARIANTS
    return {name: (method, options) for name, (method, options) in exports.items()
            if not METHODS.get(method).requires - signals}


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


def graph_io(path: Path):
    """(inputs, outputs) of the graph at `path` as records.TensorSpec lists."""
    from vtp_export.records import TensorSpec

    graph = load_graph(path).graph
    return ([TensorSpec(**value_signature(v)) for v in graph.input],
            [TensorSpec(**value_signature(v)) for v in graph.output])


def graph_signature(path: Path) -> dict:
    model = load_graph(path)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return {
        "opset": opset,
        "inputs": [value_signature(v) for v in model.graph.input],
        "outputs": [value_signature(v) for v in model.graph.output],
        "ops": dict(sorted(Counter(node.op_type for node in model.graph.node).items())),
    }


def golden_path(model: str, method: str, keep: int) -> Path:
    return GRAPHS_DIR / model / f"{method}-k{keep}.json"


def golden_text_path(model: str) -> Path:
    """The text graph of text-conditioned methods: the same for every method and keep."""
    return GRAPHS_DIR / model / "clip-text.json"


def write_signature(signature: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(signature, indent=2) + "\n")


def read_signature(path: Path) -> dict:
    return json.loads(path.read_text())
