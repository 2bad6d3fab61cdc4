"""Deployment targets, one TOML data file each under targets/."""

import tomllib
from dataclasses import dataclass
from pathlib import Path

from vtp_export.registry import Registry

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"


@dataclass(frozen=True)
class Target:
    name: str
    summary: str
    runtime: str  # "onnxruntime" or "tensorrt"
    opset: int  # opset the graph is exported at
    max_opset: int  # highest opset the target's runtime parses
    precisions: tuple[str, ...]
    default_precision: str
    memory_budget_mib: int
    gpu_arch: str | None = None
    jetpack: str | None = None
    tensorrt: str | None = None
    workspace_mib: int | None = None
    dla: bool = False
    trtexec: str = "trtexec"

    @property
    def uses_tensorrt(self) -> bool:
        return self.runtime == "tensorrt"

    def as_record(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def load_target(path: Path) -> Target:
    data = tomllib.loads(path.read_text())
    data["precisions"] = tuple(data["precisions"])
    if data["opset"] > data["max_opset"]:
        raise ValueError(f"{path}: opset {data['opset']} above the target's ceiling {data['max_opset']}")
    return Target(**data)


TARGETS: Registry[Target] = Registry("target")
for _path in sorted(TARGETS_DIR.glob("*.toml")):
    TARGETS.add(_path.stem, load_target(_path))
