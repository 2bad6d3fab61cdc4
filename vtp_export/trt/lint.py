"""Static TensorRT-compatibility lint of an ONNX graph against a target, without TensorRT.

Complements the TensorRT-RTX parser check: that parser is TensorRT 10's, so the rules of older TensorRT
versions a target ships (JetPack 5: TensorRT 8.5) are stated here, as target data (target_data/*.toml).
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from vtp_export.errors import TargetConstraintError
from vtp_export.onnx.shapes import static_value_shapes
from vtp_export.records.graph import LintResult
from vtp_export.targets import BF16_MIN_SM, FP8_MIN_SM, Target

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
Reciprocal ReduceSumSquare Relu Reshape Resize ReverseSequence RNN Round ScaledTanh Scan Scatter ScatterElements ScatterND
Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan
Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where Xor
""".split())
DATA_DEPENDENT_OPS = frozenset({"NonZero", "Unique", "Compress", "NonMaxSuppression"})

# Q/DQ and Cast types by TensorRT version, from onnx-tensorrt's docs/operators.md (release/8.5-GA, 10.0-GA,
# and the 10.x series since): 8.5 quantizes to INT8 only, Cast takes no BF16; 10.x quantizes to INT8, FP8
# (E4M3) and INT4 and casts BF16. Quantized types are made by QuantizeLinear only, never by Cast, and
# TensorRT's quantization is symmetric: zero points are zero. TensorRT's explicit-quantization guide
# (docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html): per-tensor and
# per-channel scales, block scales for INT4 weights only.
T = onnx.TensorProto
QUANTIZED_TYPES_8_5 = frozenset({T.INT8})
QUANTIZED_TYPES_10 = frozenset({T.INT8, T.FLOAT8E4M3FN, T.INT4})
FP8_TYPES = frozenset({T.FLOAT8E4M3FN, T.FLOAT8E4M3FNUZ, T.FLOAT8E5M2, T.FLOAT8E5M2FNUZ})
CAST_ONLY_BY_QUANTIZATION = frozenset({T.INT8, T.INT4, T.UINT4, T.FLOAT4E2M1}) | FP8_TYPES


def lint_graph(path: Path, target: Target, dynamic_batch: bool = False) -> LintResult:
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
    check_types(model, where, target, initializers)
    shapes = static_value_shapes(model, dynamic_batch)
    for node in graph.node:
        if node.op_type == "ScatterElements":
            data, indices = shapes.get(node.input[0]), shapes.get(node.input[1])
            if data and indices and any(i > d for i, d in zip(indices, data)):
                raise TargetConstraintError(
                    f"{where}: node {node.name!r} (ScatterElements): indices {indices} larger than the data {data} "
                    "in some axis; TensorRT rejects that (compact with TopK + Gather instead)")
    return LintResult(target=target.name, opset=opset, nodes=len(graph.node), passed=True)


def check_types(model: onnx.ModelProto, where: str, target: Target, initializers: dict) -> None:
    """Cast and Q/DQ types the target's TensorRT and GPU have (module comment above for the sources)."""
    newer = target.has_bf16_fp8_types
    quantized_types = QUANTIZED_TYPES_10 if newer else QUANTIZED_TYPES_8_5
    for node in model.graph.node:
        name = f"{where}: node {node.name!r} ({node.op_type})"
        if node.op_type == "Cast":
            to = attribute(node, "to", T.FLOAT)
            if to in CAST_ONLY_BY_QUANTIZATION:
                raise TargetConstraintError(f"{name}: Cast to {type_name(to)}; TensorRT makes quantized types "
                                            "with QuantizeLinear only")
            check_float_type(to, name, target)
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = initializers.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if node.op_type == "QuantizeLinear":
                quantized = attribute(node, "output_dtype", 0) or (zero_point.data_type if zero_point else T.UINT8)
            else:
                quantized = zero_point.data_type if zero_point else initializer_type(initializers, node.input[0])
            if quantized is not None and quantized not in quantized_types:
                allowed = ", ".join(type_name(t) for t in sorted(quantized_types))
                raise TargetConstraintError(f"{name}: quantizes to {type_name(quantized)}; TensorRT "
                                            f"{target.tensorrt_range} takes {allowed}")
            if quantized in FP8_TYPES:
                check_float_type(quantized, name, target)
            if zero_point is not None and numpy_helper.to_array(zero_point).astype(np.float32).any():
                raise TargetConstraintError(f"{name}: non-zero zero point; TensorRT quantizes symmetrically")
            if attribute(node, "block_size", 0) and quantized != T.INT4:
                raise TargetConstraintError(f"{name}: block scales; TensorRT has them for INT4 weights only")
    for tensor in model.graph.initializer:
        check_float_type(tensor.data_type, f"{where}: initializer {tensor.name!r}", target)


def check_float_type(onnx_type: int, name: str, target: Target) -> None:
    """BF16 needs TensorRT 10 and sm_80+; FP8 TensorRT 10 and sm_89+; both need the target to list them."""
    if onnx_type == T.BFLOAT16:
        precision, min_sm = "bf16", BF16_MIN_SM
    elif onnx_type in FP8_TYPES:
        precision, min_sm = "fp8", FP8_MIN_SM
    else:
        return
    if not target.has_bf16_fp8_types:
        raise TargetConstraintError(f"{name}: {type_name(onnx_type)} is not a TensorRT {target.tensorrt_range} type")
    if target.sm < min_sm:
        raise TargetConstraintError(f"{name}: {type_name(onnx_type)} needs sm_{min_sm} or later, the target is "
                                    f"{target.gpu_arch}")
    if precision not in target.precisions:
        raise TargetConstraintError(f"{name}: {type_name(onnx_type)}; target {target.name} does not list {precision} "
                                    f"(supports: {', '.join(target.precisions)})")


def initializer_type(initializers: dict, name: str) -> int | None:
    return initializers[name].data_type if name in initializers else None


def type_name(onnx_type: int) -> str:
    return T.DataType.Name(onnx_type)


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
