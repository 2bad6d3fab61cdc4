"""config.json of an engine folder written by vtp-export build."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vtp_export.onnx.names import CONFIG_JSON
from vtp_export.records.codec import load_json, optional_key, parse_record
from vtp_export.records.export import Verification

ENGINE_SCHEMA = "vtp-export.engine/1"


@dataclass
class GpuRecord:
    name: str | None
    sm: int | None


@dataclass(frozen=True)
class EngineFlags:
    """How an engine was built (trt.builder.build_engine)."""

    precision: str
    strongly_typed: bool
    workspace_mib: int | None
    dynamic_batch: bool
    max_batch: int | None  # the optimisation profile's largest batch, for a dynamic batch
    timing_cache: str
    monitor_memory: bool


@dataclass(frozen=True)
class Parity:
    """A TensorRT engine against onnxruntime on the fp32 graph, on seeded random inputs (Polygraphy)."""

    samples: int
    max_abs_diff: float  # image_embeds on tokens both kept; text_embeds
    tolerance: dict[str, float]  # atol, rtol: what "agrees" means, recorded, not enforced
    token_index_min_set_overlap: float | None = optional_key()  # the vision engine


@dataclass
class EngineFile:
    file: str
    sha256: str
    bytes: int
    onnx_sha256: str
    build_s: float
    layers: int
    float32_layers: int
    flags: EngineFlags
    activation_memory_bytes: int | None = None
    within_memory_budget: bool | None = None


@dataclass
class EngineRecord:
    """config.json of an engine folder written by vtp-export build."""

    producer: str
    schema: str
    vtp_export_version: str
    created: str
    export: str
    tensorrt: str  # major.minor the engines are tied to
    tensorrt_full: str
    gpu: GpuRecord
    target: str
    precision: str
    engines: dict[str, EngineFile]
    export_verification: dict[str, Verification | None]
    parity_with_onnxruntime: dict[str, Parity]  # role -> parity
    jetpack: str | None = None


def read_engine_record(folder: Path) -> EngineRecord:
    data = load_json(folder / CONFIG_JSON, "vtp-export engine folder")
    return parse_record(EngineRecord, data, folder / CONFIG_JSON, ENGINE_SCHEMA, "vtp-export engine folder")
