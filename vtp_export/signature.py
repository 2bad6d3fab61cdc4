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
# Every registered method a golden model supports has a golden signature of its fp32 graph at that model's
# keep (`none` at its own N), and so do the method variants whose graphs differ in structure.
GOLDEN_KEEPS = {"llava15-tiny": 64, "llava-next-tiny": 320, "qwen2.5-vl-tiny": 64}
GOLDEN_VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "holov-paper": ("holov", {"variant": "paper"}),
    "trim-iqr": ("trim", {"count": "iqr"}),
}


def golden_exports(model: str) -> dict[str, tuple[str, dict[str, str], int | None]]:
    """Golden name -> (method, method options, keep) of every method and variant the model supports."""
    from vtp_export.errors import UsageError
    from vtp_export.methods import METHODS
    from vtp_export.models import MODELS

    adapter = MODELS.get(model)
    geometry = adapter.geometry(adapter.default_config(), adapter.resolved_options({}))
    candidates = {name: (name, {}) for name in METHODS.names()} | GOLDEN_VARIANTS
    golden = {}
    for name, (method, options) in candidates.items():
        keep = None if method == "none" else GOLDEN_KEEPS[model]
        try:
            adapter.check_method(METHODS.get(method))
            METHODS.get(method).create(geometry, keep, options)
        except UsageError:  # the model refuses the method or this variant of it
            continue
        golden[name] = (method, options, keep)
    return golden


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
