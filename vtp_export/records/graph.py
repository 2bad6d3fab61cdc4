"""What was checked and done to each exported graph beside its verification: the TensorRT lint, the TensorRT
parser check, and the precision transform with its fidelity (config.json's graphs.<role>.lint,
.tensorrt_parser and .precision)."""

from __future__ import annotations

from dataclasses import dataclass

from vtp_export.records.codec import optional_key


@dataclass(frozen=True)
class LintResult:
    """The static TensorRT-compatibility lint a graph passed (trt.lint.lint_graph)."""

    target: str
    opset: int
    nodes: int
    passed: bool


@dataclass(frozen=True)
class ParserCheck:
    """TensorRT's ONNX parser on a graph, and an engine built from it where asked (trt.parser)."""

    checked: bool
    reason: str | None = optional_key()  # why it was not checked
    parser: str | None = optional_key()  # the binding and its version
    layers: int | None = optional_key()
    parse_seconds: float | None = optional_key()
    engine_built: bool | None = optional_key()
    build_seconds: float | None = optional_key()


@dataclass(frozen=True)
class FidelityTarget:
    """The bounds a reduced-precision graph should meet (fp16 / bf16: the score path stays float32)."""

    token_overlap_min: float
    embeds_cosine_min: float


@dataclass(frozen=True, kw_only=True)
class Fidelity:
    """A reduced-precision graph against the fp32 PyTorch module on the verification inputs (precision.fidelity)."""

    precision: str
    backend: str  # what computed the graph's outputs: onnxruntime, or onnxruntime on an emulation twin
    samples: int
    images: int
    token_overlap_min: float | None = optional_key()  # graphs with token_index (not text.onnx)
    token_overlap_mean: float | None = optional_key()
    embeds_cosine_min: float
    embeds_cosine_mean: float
    target: FidelityTarget | None = optional_key()  # precisions with a target
    meets_target: bool | None = optional_key()


@dataclass(frozen=True, kw_only=True)
class LoweredGraph:
    """The fp32 graph rewritten to fp16 / bf16 by ModelOpt AutoCast (precision.transforms.lower_precision)."""

    precision: str
    tool: str
    float32_nodes: int  # nodes of the lowered graph kept float32
    casts: int
    opset: int
    graph_bytes: dict[str, int]  # "fp32" and the precision -> bytes on disk, external data included
    seconds: float
    fidelity: Fidelity | None = optional_key()  # set by the export; absent on a quantized graph's remainder


@dataclass(frozen=True, kw_only=True)
class QuantizedGraph:
    """The fp32 graph quantized to int8 / fp8 by ModelOpt's ONNX PTQ (precision.transforms.quantize)."""

    precision: str
    tool: str
    quantized_tensors: int
    calibration_batches: int
    calibration_images: int
    excluded_nodes: int
    opset: int
    seconds: float
    remainder: LoweredGraph | None = optional_key()  # the unquantized rest lowered, unless kept fp32
    graph_bytes: dict[str, int]
    fidelity: Fidelity | None = optional_key()


@dataclass(frozen=True)
class FlagPrecision:
    """A weakly typed target's precision (TensorRT 8.5): the graph stays fp32, the engine gets the precision
    from builder flags."""

    precision: str
    graph: str
    engine: str


# Decoding tries these in order: each lacks a key the ones before it require.
GraphPrecision = QuantizedGraph | LoweredGraph | FlagPrecision
