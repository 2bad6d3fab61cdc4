"""Deployment toolchains: what a target's `runtime` (target_data/*.toml) makes of an export, declared per
toolchain. The exporter, builder and CLI ask the target's toolchain (Target.toolchain) what to do."""

from collections.abc import Callable
from dataclasses import dataclass

from vtp_export.registry import Registry


@dataclass(frozen=True)
class Toolchain:
    name: str  # a target's `runtime`
    label: str  # in messages: "TensorRT targets"
    vision_backend: str  # the runtime's vision backend for its targets' graphs (runtime/backends.py)
    lowers_precision: bool  # engine precisions (precision/transforms.py) put into the graph, scores and norms kept fp32
    lints: bool  # graphs checked against the target's constraints (trt/lint.py), at export and by vtp-export lint
    parser_check: bool  # graphs checked by the TensorRT ONNX parser at export (trt/parser.py)
    writes_recipe: bool  # the export carries the device build script (trt/recipe.py)
    builds_engines: bool  # vtp-export build makes engines (trt/builder.py)
    target_fields: tuple[str, ...] = ()  # Target fields its targets must set


TOOLCHAINS: Registry[Toolchain] = Registry("toolchain")
TOOLCHAINS.add("onnxruntime", Toolchain(
    name="onnxruntime", label="onnxruntime", vision_backend="onnxruntime", lowers_precision=False, lints=False,
    parser_check=False, writes_recipe=False, builds_engines=False,
))
TOOLCHAINS.add("tensorrt", Toolchain(
    name="tensorrt", label="TensorRT", vision_backend="tensorrt", lowers_precision=True, lints=True,
    parser_check=True, writes_recipe=True, builds_engines=True,
    target_fields=("gpu_arch", "tensorrt_min", "tensorrt_max"),
))


def labels(capability: Callable[[Toolchain], bool]) -> str:
    """'TensorRT': the labels of the toolchains with a capability, for messages."""
    return " or ".join(toolchain.label for _, toolchain in TOOLCHAINS.items() if capability(toolchain))
