"""Static TensorRT-compatibility lint of an ONNX graph against a target, without TensorRT.

Complements the TensorRT-RTX parser check: that parser is TensorRT 10's, so the rules of older TensorRT
versions a target ships (JetPack 5: TensorRT 8.5) are stated here, as target data (targets/*.toml).
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from vtp_export.errors import TargetConstraintError
from vtp_export.onnx_export import static_value_shapes
from vtp_export.targets import Target

# ONNX ops (default domain) the TensorRT ONNX parser imports, TensorRT 8.5 to 10.x (onnx-tensorrt's
# operator matrix); a target lists what its own version lacks in `unsupported_ops`.
TENSORRT_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout Einsum
Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool GlobalLpPool
GlobalMaxPool Greater GreaterOrEqual GRU HardSigmoid Identity If ImageScaler InstanceNormalization IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max
MaxPool Mean Min Mul Neg Not Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomUniform RandomUniformLike
Range ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND
Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where Xor
""".split())
DATA_DEPENDENT_OPS = frozenset({"NonZero", "Unique", "Compress", "NonMaxSuppression"})


def lint_graph(path: Path, target: Target, dynamic_batch: bool = False) -> dict:
    """Raise TargetConstraintError naming the first offending node; return what was checked."""
    model = onnx.load(str(path), load_external_data=False)
    where = f"{path.name} for {target.name}"
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset > target.max_opset:
        raise TargetConstraintError(f"{where}: graph opset {opset} is above the target's ceiling {target.max_opset} "
                                    f"(TensorRT {target.tensorrt_range}); export with --target {target.name}")
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    unsupported = set(target.unsupported_ops)
    for node in graph.node:
        name = f"{where}: node {node.name!r} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            raise TargetConstraintError(f"{name}: custom domain {node.domain!r} has no TensorRT importer")
        if node.op_type in DATA_DEPENDENT_OPS:
            raise TargetConstraintError(f"{name}: data-dependent output shape")
        if node.op_type not in TENSORRT_OPS or node.op_type in unsupported:
            raise TargetConstraintError(f"{name}: not supported by TensorRT {target.tensorrt_range}")
        if node.op_type == "TopK":
            check_topk(node, name, target, initializers, constants)
        if node.op_type == "ScatterND" and attribute(node, "reduction", b"none") != b"none":
            raise TargetConstraintError(f"{name}: ScatterND with a reduction is not supported by TensorRT")
    shapes = static_value_shapes(model, dynamic_batch)
    for node in graph.node:
        if node.op_type == "ScatterElements":
            data, indices = shapes.get(node.input[0]), shapes.get(node.input[1])
            if data and indices and any(i > d for i, d in zip(indices, data)):
                raise TargetConstraintError(
                    f"{where}: node {node.name!r} (ScatterElements): indices {indices} larger than the data {data} "
                    "in some axis; TensorRT rejects that (compact with TopK + Gather instead)")
    return {"target": target.name, "opset": opset, "nodes": len(graph.node), "passed": True}


def check_topk(node: onnx.NodeProto, name: str, target: Target, initializers: dict, constants: dict) -> None:
    k_name = node.input[1]
    if k_name in initializers:
        k = numpy_helper.to_array(initializers[k_name])
    elif k_name in constants and not target.topk_k_initializer:
        k = numpy_helper.to_array(constants[k_name].attribute[0].t)
    elif k_name in constants:
        raise TargetConstraintError(f"{name}: K comes from a Constant node; TensorRT {target.tensorrt_range} needs "
                                    "an initializer")
    else:
        raise TargetConstraintError(f"{name}: K is computed in the graph; TensorRT needs a constant K")
    if int(np.max(k)) >= target.max_topk_k:
        raise TargetConstraintError(f"{name}: K = {int(np.max(k))}, TensorRT's TopK allows K < {target.max_topk_k}")


def attribute(node: onnx.NodeProto, key: str, default):
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == key), default)
