"""The TensorRT-compatibility lint names the offending node for each rule, per target."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from vtp_export.errors import ExportError, TargetConstraintError
from vtp_export.targets import TARGETS
from vtp_export.trt.lint import lint_graph


def save(tmp_path, nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10), str(path))
    return path


def value(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def topk_graph(tmp_path, k: int, k_from: str, opset: int = 17):
    """TopK over 4000 scores with K as an initializer, a Constant node, or computed from the input's shape."""
    nodes, inits = [], []
    if k_from == "initializer":
        inits.append(numpy_helper.from_array(np.array([k], np.int64), "k"))
    elif k_from == "constant":
        nodes.append(helper.make_node("Constant", [], ["k"], name="k_const",
                                      value=numpy_helper.from_array(np.array([k], np.int64))))
    else:
        nodes += [helper.make_node("Shape", ["x"], ["shape"], name="shape", start=1),
                  helper.make_node("Identity", ["shape"], ["k"], name="k_from_shape")]
    nodes.append(helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="the_topk", axis=-1))
    return save(tmp_path, nodes, [value("x", [1, 4000])],
                [value("values", [1, k]), value("indices", [1, k], TensorProto.INT64)], inits, opset)


def test_a_conforming_topk_passes(tmp_path):
    assert lint_graph(topk_graph(tmp_path, 64, "initializer"), TARGETS.get("orin")).passed


@pytest.mark.parametrize("target,k,k_from,message", [
    ("orin", 3840, "initializer", "K = 3840, TensorRT's TopK allows K < 3840"),
    ("jetpack5-orin", 64, "constant", "K comes from a Constant node; TensorRT 8.5 needs an initializer"),
    ("orin", 4000, "computed", "K is computed in the graph"),
])
def test_topk_rules(tmp_path, target, k, k_from, message):
    path = topk_graph(tmp_path, k, k_from)
    with pytest.raises(TargetConstraintError, match="node 'the_topk' \\(TopK\\): " + message.replace("(", "\\(")):
        lint_graph(path, TARGETS.get(target))


def test_constant_k_is_fine_for_tensorrt_10(tmp_path):
    assert lint_graph(topk_graph(tmp_path, 64, "constant"), TARGETS.get("orin")).passed


def test_opset_above_the_ceiling(tmp_path):
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="r")], [value("x", [2])], [value("y", [2])])
    with pytest.raises(TargetConstraintError, match="opset 18 is above the target's ceiling 17"):
        lint_graph(path, TARGETS.get("jetpack5-orin"))


def test_layer_norm_is_missing_before_tensorrt_8_6(tmp_path):
    nodes = [helper.make_node("LayerNormalization", ["x", "w"], ["y"], name="the_norm")]
    inits = [numpy_helper.from_array(np.ones(4, np.float32), "w")]
    path = save(tmp_path, nodes, [value("x", [1, 4])], [value("y", [1, 4])], inits, opset=17)
    assert lint_graph(path, TARGETS.get("orin")).passed
    with pytest.raises(TargetConstraintError, match="'the_norm' \\(LayerNormalization\\): not supported by TensorRT 8.5"):
        lint_graph(path, TARGETS.get("jetpack5-orin"))


def test_scatter_nd_reduction(tmp_path):
    nodes = [helper.make_node("ScatterND", ["x", "i", "u"], ["y"], name="the_scatter", reduction="add")]
    path = save(tmp_path, nodes, [value("x", [4]), value("i", [2, 1], TensorProto.INT64), value("u", [2])],
                [value("y", [4])])
    with pytest.raises(TargetConstraintError, match="'the_scatter' \\(ScatterND\\): ScatterND with a reduction"):
        lint_graph(path, TARGETS.get("orin"))


def test_scatter_elements_wider_than_its_data(tmp_path):
    nodes = [helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], name="wide", axis=1)]
    path = save(tmp_path, nodes, [value("x", [1, 65]), value("i", [1, 256], TensorProto.INT64), value("u", [1, 256])],
                [value("y", [1, 65])])
    with pytest.raises(TargetConstraintError, match="'wide' \\(ScatterElements\\): indices \\[1, 256\\] larger"):
        lint_graph(path, TARGETS.get("orin"))


def test_data_dependent_shapes(tmp_path):
    nodes = [helper.make_node("NonZero", ["x"], ["y"], name="nz")]
    path = save(tmp_path, nodes, [value("x", [8])], [value("y", [1, None], TensorProto.INT64)])
    with pytest.raises(TargetConstraintError, match="'nz' \\(NonZero\\): data-dependent output shape"):
        lint_graph(path, TARGETS.get("orin"))
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="s"), helper.make_node("ConstantOfShape", ["s"], ["y"], name="cos"),
             helper.make_node("Add", ["y", "y"], ["z"], name="add")]
    path = save(tmp_path, nodes, [value("x", ["n"])], [value("z", ["n"])])
    with pytest.raises(ExportError, match="non-static axis"):
        lint_graph(path, TARGETS.get("orin"))


def test_unsupported_op(tmp_path):
    nodes = [helper.make_node("Mod", ["x", "x"], ["y"], name="the_mod")]
    path = save(tmp_path, nodes, [value("x", [2])], [value("y", [2])])
    with pytest.raises(TargetConstraintError, match="'the_mod' \\(Mod\\): not supported by TensorRT 10.3"):
        lint_graph(path, TARGETS.get("orin"))


def cast_graph(tmp_path, to, opset=18):
    nodes = [helper.make_node("Cast", ["x"], ["y"], name="the_cast", to=to)]
    return save(tmp_path, nodes, [value("x", [4])], [value("y", [4], to)], opset=opset)


def qdq_graph(tmp_path, quantized, zero=0, with_zero_point=True, opset=19):
    """x -> QuantizeLinear -> DequantizeLinear with a per-tensor scale and a zero point of type `quantized`."""
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "scale")]
    q_inputs = ["x", "scale"]
    if with_zero_point:
        inits.append(helper.make_tensor("zero", quantized, [], [zero]))
        q_inputs.append("zero")
    nodes = [helper.make_node("QuantizeLinear", q_inputs, ["q"], name="the_q"),
             helper.make_node("DequantizeLinear", ["q", *q_inputs[1:]], ["y"], name="the_dq")]
    return save(tmp_path, nodes, [value("x", [4])], [value("y", [4])], inits, opset=opset)


@pytest.mark.parametrize("target,passes", [("a100", True), ("h100", True), ("thor", True), ("orin", False)])
def test_bf16_casts_need_a_target_with_bf16(tmp_path, target, passes):
    path = cast_graph(tmp_path, TensorProto.BFLOAT16)
    if passes:
        assert lint_graph(path, TARGETS.get(target)).passed
    else:
        with pytest.raises(TargetConstraintError, match="'the_cast' \\(Cast\\): BFLOAT16; target orin does not list bf16"):
            lint_graph(path, TARGETS.get(target))


def test_tensorrt_8_5_has_no_bf16(tmp_path):
    with pytest.raises(TargetConstraintError, match="BFLOAT16 is not a TensorRT 8.5 type"):
        lint_graph(cast_graph(tmp_path, TensorProto.BFLOAT16, opset=17), TARGETS.get("jetpack5-orin"))
    assert lint_graph(cast_graph(tmp_path, TensorProto.FLOAT16, opset=17), TARGETS.get("jetpack5-orin")).passed


def test_quantized_types_come_from_quantize_linear_only(tmp_path):
    with pytest.raises(TargetConstraintError, match="Cast to INT8; TensorRT makes quantized types with QuantizeLinear"):
        lint_graph(cast_graph(tmp_path, TensorProto.INT8), TARGETS.get("orin"))


@pytest.mark.parametrize("target,quantized,message", [
    ("orin", TensorProto.INT8, None),
    ("h100", TensorProto.FLOAT8E4M3FN, None),
    ("l4", TensorProto.FLOAT8E4M3FN, None),
    ("a100", TensorProto.FLOAT8E4M3FN, "FLOAT8E4M3FN needs sm_89 or later, the target is sm_80"),
    ("orin", TensorProto.FLOAT8E4M3FN, "FLOAT8E4M3FN needs sm_89 or later, the target is sm_87"),
    ("h100", TensorProto.FLOAT8E5M2, "quantizes to FLOAT8E5M2; TensorRT 10.0-11 takes INT8, FLOAT8E4M3FN, INT4"),
    ("orin", TensorProto.UINT8, "quantizes to UINT8"),
])
def test_qdq_types_per_target(tmp_path, target, quantized, message):
    path = qdq_graph(tmp_path, quantized)
    if message is None:
        assert lint_graph(path, TARGETS.get(target)).passed
    else:
        with pytest.raises(TargetConstraintError, match="'the_q' \\(QuantizeLinear\\): " + message):
            lint_graph(path, TARGETS.get(target))


def test_qdq_rules_of_tensorrt_8_5(tmp_path):
    jetpack5 = TARGETS.get("jetpack5-orin")
    assert lint_graph(qdq_graph(tmp_path, TensorProto.INT8, opset=13), jetpack5).passed
    with pytest.raises(TargetConstraintError, match="quantizes to UINT8; TensorRT 8.5 takes INT8"):
        lint_graph(qdq_graph(tmp_path, TensorProto.INT8, with_zero_point=False, opset=13), jetpack5)


def test_qdq_zero_point_must_be_zero(tmp_path):
    with pytest.raises(TargetConstraintError, match="'the_q' \\(QuantizeLinear\\): non-zero zero point"):
        lint_graph(qdq_graph(tmp_path, TensorProto.INT8, zero=3), TARGETS.get("orin"))
