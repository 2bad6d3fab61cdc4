"""Typed, versioned records: an export folder's config.json, an engine folder's config.json, a profile's
report.json. Each is a dataclass with a schema id; reading one refuses other schemas and names any missing
or mistyped key in one line, and an export folder is checked against its record before it is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vtp_export import __version__
from vtp_export.errors import RecordError
from vtp_export.graph_io import CONFIG_JSON, PRODUCER, TOKEN_INDEX
from vtp_export.models.base import Geometry
from vtp_export.output_folder import current_umask
from vtp_export.targets import Target
from vtp_export.weights import RandomWeights, WeightsFolder, WeightsSource, weights_from_record

EXPORT_SCHEMA = "vtp-export.export/2"
ENGINE_SCHEMA = "vtp-export.engine/1"
PROFILE_SCHEMA = "vtp-export.profile/2"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list[int | str]  # a str is a symbolic axis (the dynamic batch)


@dataclass
class Verification:
    """How a graph was checked against the PyTorch module it came from (verify.compare_with_onnxruntime)."""

    backend: str
    samples: int
    batch: int
    max_abs_diff: dict[str, float]  # output name -> largest |onnx - torch|
    max_abs: dict[str, float]  # output name -> largest |torch|
    tolerance: dict[str, float]  # atol, rtol
    passed: bool
    selection: str | None = None  # vision graphs: "identical", or how the kept sets overlap
    near_tie_samples_passed_over: int = 0  # random samples whose selection sits within rounding of a tie


@dataclass
class GraphRecord:
    file: str
    sha256: str
    external_data: dict[str, str]  # file name -> sha256
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    nodes: int
    dynamic_batch: bool
    verification: Verification | None = None
    lint: dict[str, Any] | None = None
    float32_nodes: list[str] = field(default_factory=list)
    tensorrt_parser: dict[str, Any] | None = None
    precision: dict[str, Any] | None = None  # how the verified fp32 graph was lowered or quantized, and its fidelity

    def input(self, name: str) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == name)

    @property
    def batch(self) -> int | None:
        """The fixed batch size, None for a dynamic batch axis."""
        first = self.inputs[0].shape[0]
        return first if isinstance(first, int) else None

    def files(self) -> list[str]:
        return [self.file, *self.external_data]


@dataclass
class ModelRecord:
    name: str
    weights: WeightsSource
    options: dict[str, str]
    geometry: Geometry
    vision_parameters_bytes_fp32: int
    text_weights: WeightsSource | None = None  # CLIP, for text-conditioned methods
    text_max_length: int | None = None
    text_vocab_size: int | None = None


@dataclass
class MethodRecord:
    name: str
    reference: str
    options: dict[str, Any]
    variant: dict[str, Any]  # the options that differ from the default export's
    text_conditioned: bool
    exact_selection: bool

    @property
    def label(self) -> str:
        """'holov variant=paper': the method with what sets it apart from its default export."""
        return " ".join([self.name, *(f"{k}={v}" for k, v in sorted(self.variant.items()))])


@dataclass
class DeviceBuild:
    script: str
    precision: str
    commands: list[str]


@dataclass(frozen=True)
class LlmFile:
    """The export's LLM converted for the device (vtp-export llm): a GGUF for llama.cpp."""

    file: str
    quant: str
    sha256: str
    bytes: int
    n_vocab: int
    n_embd: int
    n_layer: int
    tokenizer: str  # llama.cpp's tokenizer model: "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    source: str  # the LLM's weights: a checkpoint folder or random(seed=...)
    format: str = "gguf"


@dataclass
class ExportRecord:
    """config.json of an export folder."""

    producer: str
    schema: str
    vtp_export_version: str
    created: str
    seed: int
    model: ModelRecord
    method: MethodRecord
    keep: int
    target: Target
    graphs: dict[str, GraphRecord]  # role ("vision", "text") -> graph
    versions: dict[str, str]
    timings: dict[str, float]
    device_build: DeviceBuild | None = None
    llm: LlmFile | None = None

    def files(self) -> list[str]:
        """Every file the export wrote besides config.json."""
        names = [name for graph in self.graphs.values() for name in graph.files()]
        if self.device_build is not None:
            names.append(self.device_build.script)
        if self.llm is not None:
            names.append(self.llm.file)
        return names


@dataclass
class GpuRecord:
    name: str | None
    sm: int | None


@dataclass
class EngineFile:
    file: str
    sha256: str
    bytes: int
    onnx_sha256: str
    build_s: float
    layers: int
    float32_layers: int
    flags: dict[str, Any]
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
    parity_with_onnxruntime: dict[str, Any]
    jetpack: str | None = None


# --- JSON <-> dataclasses ------------------------------------------------------------------------------------

def encode(value: Any) -> Any:
    if isinstance(value, (RandomWeights, WeightsFolder)):
        return value.as_record()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def decode(hint: Any, data: Any, where: str) -> Any:
    """`data` (parsed JSON) as `hint`; RecordError naming the key path `where` on any mismatch."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return data
    if hint == WeightsSource or set(args) == {RandomWeights, WeightsFolder}:
        try:
            return weights_from_record(data)
        except (KeyError, ValueError, TypeError):
            raise RecordError(f"{where} is not a weights source") from None
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return decode(option, data, where)
            except RecordError:
                continue
        raise RecordError(f"{where} has an unexpected value {data!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(data, dict):
            raise RecordError(f"{where} should be an object")
        hints = typing.get_type_hints(hint)
        values = {}
        for f in dataclasses.fields(hint):
            if f.name in data:
                values[f.name] = decode(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where} lacks the key {f.name!r}")
        return hint(**values)
    if origin in (list, tuple):
        if not isinstance(data, list):
            raise RecordError(f"{where} should be a list")
        items = [decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(data, dict):
            raise RecordError(f"{where} should be an object")
        return {k: decode(args[1], v, f"{where}.{k}") for k, v in data.items()}
    if hint is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if hint is Path and isinstance(data, str):
        return Path(data)
    if isinstance(hint, type) and isinstance(data, hint) and not (hint is int and isinstance(data, bool)):
        return data
    raise RecordError(f"{where} should be {getattr(hint, '__name__', hint)}, not {data!r}")


def load_json(path: Path, what: str) -> dict:
    """A JSON object from `path`, or RecordError saying what is wrong with the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecordError(f"{path.parent} has no {path.name}: not a {what}") from None
    except PermissionError:
        raise RecordError(f"cannot read {path}: permission denied") from None
    except IsADirectoryError:
        raise RecordError(f"{path} is a folder, not a {what}'s {path.name}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecordError(f"cannot read {path}: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): the file is corrupt") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path} is not a JSON object: the file is corrupt")
    return data


def parse_record(cls: type, data: dict, path: Path, schema: str, what: str) -> Any:
    if data.get("producer") != PRODUCER:
        raise RecordError(f"{path} was not written by vtp-export: not a {what}")
    found = data.get("schema")
    if found != schema:
        wrote = f"schema {found}" if found else "no schema (an older vtp-export)"
        raise RecordError(f"{path} has {wrote}; this vtp-export {__version__} reads {schema}: redo it with this version")
    return decode(cls, data, path.name)


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a temp file beside `path`, renamed over it. Non-finite floats are refused."""
    try:
        text = json.dumps(encode(data), indent=2, allow_nan=False) + "\n"
    except ValueError as error:
        raise RecordError(f"cannot record {path.name}: {error} (a non-finite number)") from None
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# --- export folders -----------------------------------------------------------------------------------------

def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_export(folder: Path, verify: bool = True) -> ExportRecord:
    """The record of an export folder; with `verify`, every file it names is checked first: present,
    of the recorded sha256 (about 1 s per GB), and each graph's inputs and outputs as recorded."""
    if not folder.exists():
        raise RecordError(f"export folder {folder} does not exist")
    if not folder.is_dir():
        raise RecordError(f"{folder} is a file, not an export folder")
    data = load_json(folder / CONFIG_JSON, "vtp-export export folder")
    if "engines" in data:
        raise RecordError(f"{folder} is an engine folder: pass the export folder it was built from")
    record = parse_record(ExportRecord, data, folder / CONFIG_JSON, EXPORT_SCHEMA, "vtp-export export folder")
    if verify:
        verify_export(folder, record)
    return record


def verify_export(folder: Path, record: ExportRecord) -> None:
    from vtp_export.signature import graph_io

    for name in record.files():
        path = folder / name
        if not path.is_file():
            raise RecordError(f"{folder} lacks {name}, which its config.json lists: the export is incomplete")
    for graph in record.graphs.values():
        recorded = {graph.file: graph.sha256} | graph.external_data
        for name, digest in recorded.items():
            try:
                actual = sha256(folder / name)
            except OSError as error:
                raise RecordError(f"cannot read {folder / name}: {error.strerror}") from None
            if actual != digest:
                raise RecordError(f"{folder / name} does not match the sha256 its config.json records: the file was "
                                  "changed or replaced after export; export again")
        inputs, outputs = graph_io(folder / graph.file)
        if inputs != graph.inputs or outputs != graph.outputs:
            raise RecordError(f"{folder / graph.file}: its inputs/outputs are not the ones config.json records")
    vision = record.graphs.get("vision")
    if vision is None:
        raise RecordError(f"{folder / CONFIG_JSON} records no vision graph")
    kept = next((spec.shape[1] for spec in vision.outputs if spec.name == TOKEN_INDEX), None)
    if kept != record.keep:
        raise RecordError(f"{folder / CONFIG_JSON} says keep {record.keep}, its vision graph keeps {kept} tokens")


def read_engine_record(folder: Path) -> EngineRecord:
    data = load_json(folder / CONFIG_JSON, "vtp-export engine folder")
    return parse_record(EngineRecord, data, folder / CONFIG_JSON, ENGINE_SCHEMA, "vtp-export engine folder")


# --- profiles -----------------------------------------------------------------------------------------------

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
