"""Deployment targets, one TOML data file each under target_data/ (package data: an installed wheel has them)."""

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from vtp_export.contract import TENSORRT_MAX_TOPK_K
from vtp_export.registry import Registry
from vtp_export.toolchains import TOOLCHAINS, Toolchain

TARGETS_DIR = Path(__file__).resolve().parent / "target_data"
PRECISIONS = ("fp32", "fp16", "bf16", "fp8", "int8")
FP8_MIN_SM = 89  # Ada and later
BF16_MIN_SM = 80  # Ampere and later
# First TensorRT whose ONNX parser takes BF16 and FP8 tensors (onnx-tensorrt docs/operators.md: 8.5 and 8.6
# list DOUBLE, FLOAT32, FLOAT16, INT8, BOOL; 10.0 adds BFLOAT16, FP8, INT4).
TENSORRT_BF16_FP8 = (10, 0)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    runtime: str  # its toolchain's name (toolchains.py): "onnxruntime" or "tensorrt"
    opset: int  # opset the graph is exported at
    max_opset: int  # highest opset the target's runtime parses
    precisions: tuple[str, ...]
    default_precision: str
    memory_budget_mib: int
    gpu_arch: str | None = None  # "sm_87"
    jetpack: str | None = None
    tensorrt_min: str | None = None  # TensorRT versions the target ships, inclusive (major.minor)
    tensorrt_max: str | None = None  # major.minor, or a major alone for every minor of it ("11": 11.x)
    workspace_mib: int | None = None
    dla: bool = False  # the device has DLA cores; these graphs run on the GPU
    max_topk_k: int = TENSORRT_MAX_TOPK_K
    topk_k_initializer: bool = False  # TensorRT 8.5: TopK's K must be an initializer, not a Constant node
    unsupported_ops: tuple[str, ...] = ()  # ONNX ops this target's TensorRT parser lacks, beyond the common set
    trtexec: str = "trtexec"

    @property
    def toolchain(self) -> Toolchain:
        return TOOLCHAINS.get(self.runtime)

    @property
    def sm(self) -> int | None:
        """Compute capability as an integer, 87 for sm_87."""
        return int(self.gpu_arch.removeprefix("sm_")) if self.gpu_arch else None

    @property
    def tensorrt_range(self) -> str | None:
        if self.tensorrt_min is None:
            return None
        return self.tensorrt_min if self.tensorrt_min == self.tensorrt_max else f"{self.tensorrt_min}-{self.tensorrt_max}"

    @property
    def strongly_typed(self) -> bool:
        """Strongly typed networks exist from TensorRT 9 on."""
        return self.tensorrt_min is not None and version_tuple(self.tensorrt_min) >= (9,)

    @property
    def has_bf16_fp8_types(self) -> bool:
        """The target's TensorRT parses BF16 and FP8 tensors (every version it ships)."""
        return self.tensorrt_min is not None and version_tuple(self.tensorrt_min)[:2] >= TENSORRT_BF16_FP8

    def accepts_tensorrt(self, version: str) -> bool:
        """Whether an installed TensorRT `version` (x.y.z...) is one this target ships."""
        found = version_tuple(version)[:2]
        highest = version_tuple(self.tensorrt_max)
        return version_tuple(self.tensorrt_min) <= found and found[:len(highest)] <= highest

    def as_record(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) not in (None, ())}


def load_target(path: Path) -> Target:
    data = tomllib.loads(path.read_text())
    for key in ("precisions", "unsupported_ops"):
        if key in data:
            data[key] = tuple(data[key])
    try:
        target = Target(**data)
    except TypeError as error:
        raise ValueError(f"{path}: {error}") from None
    if target.runtime not in TOOLCHAINS:
        raise ValueError(f"{path}: runtime {target.runtime!r} is not one of {', '.join(TOOLCHAINS.names())}")
    if target.name != path.stem:
        raise ValueError(f"{path}: name {target.name!r} differs from the file name {path.stem!r}")
    if target.opset > target.max_opset:
        raise ValueError(f"{path}: opset {target.opset} above the target's ceiling {target.max_opset}")
    if not set(target.precisions) <= set(PRECISIONS) or target.default_precision not in target.precisions:
        raise ValueError(f"{path}: precisions {target.precisions} / default {target.default_precision} "
                         f"must come from {PRECISIONS}")
    if "fp8" in target.precisions and (target.sm is None or target.sm < FP8_MIN_SM):
        raise ValueError(f"{path}: fp8 needs sm_{FP8_MIN_SM} or later, the target is {target.gpu_arch}")
    needed = target.toolchain.target_fields
    if any(getattr(target, name) is None for name in needed):
        listed = f"{', '.join(needed[:-1])} and {needed[-1]}" if len(needed) > 1 else needed[0]
        raise ValueError(f"{path}: a {target.toolchain.label} target names its {listed}")
    return target


TARGETS: Registry[Target] = Registry("target")
for _path in sorted(TARGETS_DIR.glob("*.toml")):
    TARGETS.add(_path.stem, load_target(_path))
