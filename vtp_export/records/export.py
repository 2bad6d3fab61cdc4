"""config.json of an export folder: typed, versioned, and checked against the folder before it is used (every
file present, of its recorded sha256, each graph's I/O as recorded)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vtp_export.contract import Geometry, WeightsSource
from vtp_export.errors import RecordError
from vtp_export.models.base import VisionLanguageModel
from vtp_export.onnx.names import CONFIG_JSON, TOKEN_INDEX
from vtp_export.onnx.signature import load_graph, value_signature
from vtp_export.records.codec import encode, load_json, parse_record, sha256, write_json
from vtp_export.records.graph import GraphPrecision, LintResult, ParserCheck
from vtp_export.targets import Target

EXPORT_SCHEMA = "vtp-export.export/3"  # 3: the runtime's files travel in the folder (runtime_files)


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
    lint: LintResult | None = None
    float32_nodes: list[str] = field(default_factory=list)  # pinned to float32 by a weakly typed build's recipe
    tensorrt_parser: ParserCheck | None = None
    precision: GraphPrecision | None = None  # how the verified fp32 graph was lowered or quantized, and its fidelity

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
    # text_embeds is the prompt's mean LLM input embedding, which the runtime computes (Signal.PROMPT_EMBEDS)
    prompt_conditioned: bool = False

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


@dataclass(frozen=True)
class VllmFolder:
    """The export's LLM as a folder vLLM loads (vtp-export llm --format vllm, or vtp-export serve on its first
    start): weights in the checkpoint's key layout, the model's config with the architecture vLLM runs,
    tokenizer, processor config; each file with its sha256, checked before serving."""

    folder: str
    files: dict[str, str]  # name within the folder -> sha256
    architecture: str  # the vLLM model class ("LlavaForConditionalGeneration", or vtp-export's Qwen plugin's)
    n_layer: int
    n_embd: int
    n_vocab: int
    source: str  # the LLM's weights: a checkpoint folder or random(seed=...)
    format: str = "vllm"


# What the runtime reads of the checkpoint, copied into the export folder so that the folder runs on its own:
# the model's config.json and tokenizer (RUNTIME_FOLDER), LLaVA-NeXT's image_newline, CLIP's tokenizer.
RUNTIME_FOLDER = "model"
IMAGE_NEWLINE_FILE = "model/image_newline.npy"
CLIP_TOKENIZER_FOLDER = "clip-tokenizer"


@dataclass(frozen=True)
class RuntimeFile:
    """A file the runtime reads, by its path relative to the export folder."""

    file: str
    sha256: str


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
    runtime_files: list[RuntimeFile]
    device_build: DeviceBuild | None = None
    llm: LlmFile | None = None
    vllm: VllmFolder | None = None

    def files(self) -> list[str]:
        """Every file the export wrote besides config.json."""
        names = [name for graph in self.graphs.values() for name in graph.files()]
        names += [entry.file for entry in self.runtime_files]
        if self.device_build is not None:
            names.append(self.device_build.script)
        if self.llm is not None:
            names.append(self.llm.file)
        if self.vllm is not None:
            names += [f"{self.vllm.folder}/{name}" for name in self.vllm.files]
        return names


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


def update_export(folder: Path, sections: dict[tuple[str, ...], Any]) -> ExportRecord:
    """Replace the sections of folder's config.json that one writer owns (a key path each: ("llm",),
    ("graphs", "vision", "float32_nodes")) and keep every other key as the file has it; the file is rewritten
    atomically, and only if it is an export record before and after. Returns the updated record."""
    path = folder / CONFIG_JSON
    what = "vtp-export export folder"
    data = load_json(path, what)
    parse_record(ExportRecord, data, path, EXPORT_SCHEMA, what)
    names = {f.name for f in fields(ExportRecord)}
    for keys, value in sections.items():
        if keys[0] not in names:
            raise ValueError(f"{keys[0]!r} is not a section of an export record")
        parent = data
        for key in keys[:-1]:
            parent = parent[key]
        parent[keys[-1]] = encode(value)
    record = parse_record(ExportRecord, data, path, EXPORT_SCHEMA, what)
    write_json(path, data)
    return record


def verify_export(folder: Path, record: ExportRecord) -> None:
    for name in record.files():
        path = folder / name
        if not path.is_file():
            raise RecordError(f"{folder} lacks {name}, which its config.json lists: the export is incomplete")
    recorded = {entry.file: entry.sha256 for entry in record.runtime_files}
    for graph in record.graphs.values():
        recorded |= {graph.file: graph.sha256} | graph.external_data
    for name, digest in recorded.items():
        try:
            actual = sha256(folder / name)
        except OSError as error:
            raise RecordError(f"cannot read {folder / name}: {error.strerror}") from None
        if actual != digest:
            raise RecordError(f"{folder / name} does not match the sha256 its config.json records: the file was "
                              "changed or replaced after export; export again")
    for graph in record.graphs.values():
        inputs, outputs = graph_io(folder / graph.file)
        if inputs != graph.inputs or outputs != graph.outputs:
            raise RecordError(f"{folder / graph.file}: its inputs/outputs are not the ones config.json records")
    vision = record.graphs.get("vision")
    if vision is None:
        raise RecordError(f"{folder / CONFIG_JSON} records no vision graph")
    kept = next((spec.shape[1] for spec in vision.outputs if spec.name == TOKEN_INDEX), None)
    if kept != record.keep:
        raise RecordError(f"{folder / CONFIG_JSON} says keep {record.keep}, its vision graph keeps {kept} tokens")


def graph_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) of the graph at `path` as TensorSpec lists."""
    graph = load_graph(path).graph
    return ([TensorSpec(**value_signature(v)) for v in graph.input],
            [TensorSpec(**value_signature(v)) for v in graph.output])


def runtime_config(folder: Path, model: VisionLanguageModel) -> Any:
    """The model's HF config as the export folder carries it (its sha256 checked by read_export)."""
    path = folder / RUNTIME_FOLDER / CONFIG_JSON
    try:
        return model.config_from_dict(json.loads(path.read_text()))
    except Exception as error:  # transformers raises many types for malformed configs
        raise RecordError(f"{path} is not a valid {model.name} config: {str(error).splitlines()[0][:200]}") from None
