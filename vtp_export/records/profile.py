"""report.json of a latency profile (vtp-export profile)."""

from __future__ import annotations


from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vtp_export.records.codec import load_json, parse_record


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


@dataclass
class Profile:
    export: ProfiledExport
    tokens: TokenCounts
    llm: LlmInfo
    stages: dict[str, StageStats]
    memory: dict[str, Any]
    load: MachineLoad


@dataclass
class ProfileReport:
    producer: str
    schema: str
    created: str
    device: dict[str, Any]
    profiles: list[Profile]
    summary: list[dict[str, Any]]


def read_report(path: Path) -> ProfileReport:
    data = load_json(path, "vtp-export profile report")
    return parse_record(ProfileReport, data, path, PROFILE_SCHEMA, "vtp-export profile report")
