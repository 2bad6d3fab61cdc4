"""Engine precision: what a target supports, and which layers stay float32 inside a reduced-precision engine.

Scores and normalisations overflow or lose the ranking in fp16 (LayerNorm variance, softmax, the
pruning stage's similarities and top-k keys), so an fp16 engine keeps them float32: trtexec gets them as
--layerPrecisions with --precisionConstraints=obey, the Python builder as per-layer precision.
"""

from pathlib import Path

import onnx

from vtp_export.errors import UsageError
from vtp_export.targets import Target

BUILDABLE = ("fp16", "fp32")  # int8 / fp8 need calibration or a quantized (Q/DQ) graph
NORMALISATION_OPS = frozenset({"LayerNormalization", "Softmax", "ReduceMean", "ReduceL2", "Sqrt", "Pow", "Erf"})
PRUNING_SCOPE = "/method: "  # namespace marker of the pruning method's nodes in dynamo-exported graphs
PROJECTOR_SCOPE = "projector"
FUSED_ATTENTION = "scaled_dot_product_attention"


def engine_precision(target: Target, requested: str | None) -> str:
    """The precision to build with: the target's default, or `requested` after checking the target has it."""
    precision = requested or target.default_precision
    if precision not in target.precisions:
        raise UsageError(f"target {target.name} ({target.gpu_arch or target.runtime}) does not support {precision} "
                         f"(supports: {', '.join(target.precisions)})")
    if precision not in BUILDABLE:
        raise UsageError(f"{precision} engines need calibration data or a quantized (Q/DQ) graph, which "
                         f"vtp-export does not produce; use {' or '.join(BUILDABLE)}")
    return precision


def float32_nodes(path: Path) -> list[str]:
    """Names of the nodes an fp16 engine must run in float32: normalisations everywhere, the scores the
    encoder computes itself (the CLS attention row; not the fused attention), and the pruning stage's
    scoring and selection (its projector excepted: plain matmuls on features)."""
    model = onnx.load(str(path), load_external_data=False)
    names = []
    for node in model.graph.node:
        namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        in_pruning = PRUNING_SCOPE in namespace and PROJECTOR_SCOPE not in namespace
        encoder_scores = namespace.count("/") == 1 and FUSED_ATTENTION not in namespace
        if in_pruning or encoder_scores or node.op_type in NORMALISATION_OPS:
            names.append(node.name)
    return names
