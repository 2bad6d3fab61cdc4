"""The exporter's own guarantees: tie rule kept, weights released, non-static graphs refused."""

import gc
import weakref

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vtp_export.checkpoint.load import load_vision_stack
from vtp_export.contract import RandomWeights
from vtp_export.errors import ExportError
from vtp_export.export.graph import VisionGraph
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.onnx.export import check_static_shapes, export_onnx
from vtp_export.onnx.sessions import onnxruntime_session
from vtp_export.ops import smallest_indices, top_indices

TINY = MODELS.get("llava15-tiny")


class Ranker(torch.nn.Module):
    def forward(self, x):
        return top_indices(x, 5), smallest_indices(x, 5)


def test_ties_break_towards_the_lower_index_in_torch_and_onnx(tmp_path):
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1, 0.5, 0.9, 0.1]])
    path = tmp_path / "rank.onnx"
    export_onnx(Ranker(), (scores,), path, ("x",), ("top", "low"), 18, dynamic_batch=False)
    top, low = onnxruntime_session(path).run(None, {"x": scores.numpy()})
    assert top.tolist() == [[1, 3, 6, 0, 2]] == top_indices(scores, 5).tolist()
    assert low.tolist() == [[4, 7, 0, 2, 5]] == smallest_indices(scores, 5).tolist()
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "TopK" in ops


def test_export_releases_the_module_weights(tmp_path):
    stack = load_vision_stack(TINY, TINY.default_config(), {}, RandomWeights(0))
    encoder = VisionGraph(TINY, stack, METHODS.get("holov").create(stack.geometry, 64, {}))
    weight = weakref.ref(encoder.features.feature_layer.self_attn.q_proj.weight)
    with torch.no_grad():
        export_onnx(encoder, (torch.randn(1, 3, 336, 336),), tmp_path / "v.onnx", ("pixel_values",),
                    ("image_embeds", "token_index"), 18, dynamic_batch=False)
    del encoder, stack
    gc.collect()
    assert weight() is None, "something still holds the exported module's weights"


def save_graph(path, nodes, inputs, outputs):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.save(model, str(path))
    return path


def test_nonzero_is_refused(tmp_path):
    path = save_graph(tmp_path / "nz.onnx", [helper.make_node("NonZero", ["x"], ["y"])],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                      [helper.make_tensor_value_info("y", TensorProto.INT64, [1, None])])
    with pytest.raises(ExportError, match="non-static|NonZero"):
        check_static_shapes(path, dynamic_batch=False)


def test_symbolic_axis_is_refused_unless_it_is_the_batch(tmp_path):
    path = save_graph(tmp_path / "sym.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])])
    check_static_shapes(path, dynamic_batch=True)
    with pytest.raises(ExportError, match="non-static axis 0"):
        check_static_shapes(path, dynamic_batch=False)


def test_export_failure_is_one_typed_error(tmp_path):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x[x > 0]

    with pytest.raises(ExportError, match="ONNX export failed|non-static"):
        export_onnx(DataDependent(), (torch.randn(8),), tmp_path / "d.onnx", ("x",), ("y",), 18, dynamic_batch=False)
