"""The TensorRT parser check must be able to fail: a graph onnxruntime runs but TensorRT rejects."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vtp_export.errors import TensorRTParseError
from vtp_export.onnx.sessions import onnxruntime_session
from vtp_export.trt.parser import available_builder, check_with_tensorrt_parser

pytestmark = pytest.mark.trt


@pytest.fixture
def scatter_into_smaller_buffer(tmp_path):
    """ScatterElements with more index slots than the data axis: onnxruntime accepts, TensorRT does not."""
    nodes = [helper.make_node("ScatterElements", ["data", "indices", "updates"], ["out"], axis=1)]
    graph = helper.make_graph(
        nodes, "scatter",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 65]),
         helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 256]),
         helper.make_tensor_value_info("updates", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 65])],
    )
    path = tmp_path / "scatter.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def test_a_tensorrt_binding_is_installed_for_the_tests():
    assert available_builder() is not None, "install the test extra: pip install -e '.[test]'"


def test_rejected_graph_raises(scatter_into_smaller_buffer):
    session = onnxruntime_session(scatter_into_smaller_buffer)
    out = session.run(None, {"data": np.zeros((1, 65), np.float32),
                             "indices": np.zeros((1, 256), np.int64), "updates": np.ones((1, 256), np.float32)})
    assert out[0].shape == (1, 65)
    with pytest.raises(TensorRTParseError, match="scatter.onnx"):
        check_with_tensorrt_parser(scatter_into_smaller_buffer, build_engine=True)
