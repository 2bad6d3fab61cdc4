"""Verification of a graph against the module's outputs: each kind of disagreement is its own error, and
chaotic methods are compared by kept-set overlap and by the embeddings of the tokens both kept."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vtp_export.errors import IndexMismatchError, ShapeMismatchError, ToleranceError
from vtp_export.export.verify import MIN_SET_OVERLAP, compare_with_onnxruntime
from vtp_export.onnx.names import IMAGE_EMBEDS, TOKEN_INDEX


@pytest.fixture
def passthrough(tmp_path):
    """A graph returning its inputs as image_embeds (1, 4, 3) and token_index (1, 4)."""
    nodes = [helper.make_node("Identity", ["x"], [IMAGE_EMBEDS]), helper.make_node("Identity", ["i"], [TOKEN_INDEX])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3]),
                                           helper.make_tensor_value_info("i", TensorProto.INT64, [1, 4])],
                              [helper.make_tensor_value_info(IMAGE_EMBEDS, TensorProto.FLOAT, [1, 4, 3]),
                               helper.make_tensor_value_info(TOKEN_INDEX, TensorProto.INT64, [1, 4])])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


EMBEDS = np.arange(12, dtype=np.float32).reshape(1, 4, 3)
INDEX = np.array([[1, 2, 3, 4]])


def check(path, expected_embeds, expected_index, exact=True):
    inputs = [{"x": EMBEDS, "i": INDEX}]
    return compare_with_onnxruntime(path, inputs, [{IMAGE_EMBEDS: expected_embeds, TOKEN_INDEX: expected_index}],
                                    exact=[exact])


def test_agreement_is_recorded(passthrough):
    record = check(passthrough, EMBEDS, INDEX)
    assert record.passed and record.selection == "identical" and record.max_abs_diff[IMAGE_EMBEDS] == 0


def test_other_indices_are_an_index_mismatch(passthrough):
    with pytest.raises(IndexMismatchError, match="token_index differs from PyTorch in 1 of 4 entries"):
        check(passthrough, EMBEDS, np.array([[1, 2, 3, 5]]))


def test_other_shapes_are_a_shape_mismatch(passthrough):
    with pytest.raises(ShapeMismatchError, match=r"image_embeds is float32\[1, 4, 3\] in ONNX, float32\[1, 3, 3\]"):
        check(passthrough, EMBEDS[:, :3], INDEX)


def test_other_embeddings_are_a_tolerance_error(passthrough):
    with pytest.raises(ToleranceError, match="image_embeds differs from PyTorch by up to 0.5"):
        check(passthrough, EMBEDS + np.float32(0.5), INDEX)


def test_chaotic_selection_compares_overlap_and_shared_tokens(passthrough):
    # PyTorch kept 1, 2, 3, 9 in another order: 3 of 4 shared; the embeddings are compared by source token
    expected_index = np.array([[2, 1, 9, 3]])
    expected_embeds = EMBEDS[:, [1, 0, 3, 2]].copy()
    record = check(passthrough, expected_embeds, expected_index, exact=False)
    assert record.selection == "set overlap >= 0.750"
    expected_embeds[0, 0] += 1.0  # token 2's embedding now differs
    with pytest.raises(ToleranceError):
        check(passthrough, expected_embeds, expected_index, exact=False)


def test_chaotic_selection_needs_half_the_kept_set(passthrough):
    assert MIN_SET_OVERLAP == 0.5
    with pytest.raises(IndexMismatchError, match="shares only 25% of PyTorch's kept set"):
        check(passthrough, EMBEDS, np.array([[1, 7, 8, 9]]), exact=False)
