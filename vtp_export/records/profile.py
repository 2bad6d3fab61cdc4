"""report.json of a latency profile (vtp-export profile)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vtp_export.records.codec import load_json, optional_key, parse_record

PROFILE_SCHEMA = "vtp-export.profile/2"


@dataclass
class StageStats:
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    max_ms: float


@dataclass
class ProfiledExport:
    folder: str
    model: str
    method: str
    label: str  # method plus its non-default options: "holov variant=paper"
    keep: int
    target: str
    backend: str
    llm_backend: str


@dataclass
class TokenCounts:
    visual: int
    prompt: int
    new: int


@dataclass
class LlmInfo:
    source: str
    layers: int
    width: int


@dataclass
class MachineLoad:
    """How busy the machine was while a profile ran, beside the profile's own threads."""

    other_load: float  # 1-minute load average minus the threads the profile used
    steal_percent: float  # CPU time a hypervisor gave to other guests
    busy: bool


@dataclass(frozen=True)
class MemoryUse:
    peak_host_rss_mib: int


@dataclass
class Profile:
    export: ProfiledExport
    tokens: TokenCounts
    llm: LlmInfo
    stages: dict[str, StageStats]
    memory: MemoryUse
    load: MachineLoad


@dataclass(frozen=True)
class MachineGpu:
    name: str | None
    sm: int
    driver: str | None  # nvidia-smi's, where it runs


@dataclass(frozen=True)
class JetsonState:
    jetpack: str
    nvpmodel: str | None  # `nvpmodel -q`: the power mode
    jetson_clocks: str | None  # `jetson_clocks --show`


@dataclass(frozen=True)
class MachineRecord:
    """The machine a report was measured on."""

    cpu: str
    cpu_threads_used: int
    cpu_count: int | None
    os: str
    python: str
    versions: dict[str, str]  # package -> version
    gpu: MachineGpu | None
    jetson: JetsonState | None = optional_key()


@dataclass(frozen=True, kw_only=True)
class SummaryRow:
    """One export of a sweep: p50s, and TTFT as a ratio to the unpruned export where the sweep has one."""

    label: str
    method: str
    keep: int
    visual_tokens: int
    prompt_tokens: int
    vision_graph_ms: float
    pruning_stage_ms: float
    prefill_ms: float
    prefill_p10_p90_ms: list[float]
    prefill_std_ms: float
    decode_ms_per_token: float
    busy_machine: bool
    ttft_ratio: float | None = optional_key()
    ttft_with_overhead_ratio: float | None = optional_key()
    ideal_ratio: float | None = optional_key()


@dataclass
class ProfileReport:
    producer: str
    schema: str
    created: str
    device: MachineRecord
    profiles: list[Profile]
    summary: list[SummaryRow]


def read_report(path: Path) -> ProfileReport:
    data = load_json(path, "vtp-export profile report")
    return parse_record(ProfileReport, data, path, PROFILE_SCHEMA, "vtp-export profile report")
