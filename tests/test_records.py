"""Export folders are checked against their record before use: a swapped, truncated, missing or edited file,
or a record that lies about the graph, is refused in one line naming the file; typed records name what is
missing or mistyped."""

import dataclasses
import errno
import json
import os
import shutil

import pytest

from vtp_export.cli import main
from vtp_export.errors import RecordError
from vtp_export.onnx.names import PRODUCER
from vtp_export.records.codec import decode, encode, write_json
from vtp_export.records.engine import (
    ENGINE_SCHEMA, EngineFile, EngineFlags, EngineRecord, GpuRecord, Parity, read_engine_record,
)
from vtp_export.records.export import EXPORT_SCHEMA, ExportRecord, LlmFile, read_export, update_export
from vtp_export.records.graph import (
    Fidelity, FidelityTarget, FlagPrecision, GraphPrecision, LintResult, LoweredGraph, ParserCheck, QuantizedGraph,
)
from vtp_export.records.profile import (
    PROFILE_SCHEMA, JetsonState, LlmInfo, MachineGpu, MachineLoad, MachineRecord, MemoryUse, Profile, ProfiledExport,
    ProfileReport, StageStats, SummaryRow, TokenCounts, read_report,
)


@pytest.fixture(scope="module")
def exports(cached_export):
    """Two golden llava15-tiny exports of other I/O (64 and 576 tokens), from the session's cache: read only;
    each test tampers with its own copy (`folder`)."""
    return (cached_export("llava15-tiny", "fastervlm", 64, "cpu", verify_samples=1),
            cached_export("llava15-tiny", "none", None, "cpu", verify_samples=1))


@pytest.fixture
def folder(exports, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(exports[0], copy)
    return copy


def edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_an_intact_export_reads_back(exports):
    record = read_export(exports[0])
    assert isinstance(record, ExportRecord) and record.keep == 64 and record.schema == EXPORT_SCHEMA


def swap_graph(folder, exports):
    shutil.copy(exports[1] / "vision.onnx", folder / "vision.onnx")


def zero_sha256(folder, exports):
    edit_config(folder, lambda c: c["graphs"]["vision"].update(sha256="0" * 64))


def edit_keep(folder, exports):
    edit_config(folder, lambda c: c.update(keep=32))


def truncate_graph(folder, exports):
    data = (folder / "vision.onnx").read_bytes()
    (folder / "vision.onnx").write_bytes(data[: len(data) // 2])


def drop_data(folder, exports):
    (folder / "vision.onnx.data").unlink()


def drop_key(folder, exports):
    edit_config(folder, lambda c: c["graphs"]["vision"].pop("inputs"))


def wrong_type(folder, exports):
    edit_config(folder, lambda c: c.update(keep="sixty-four"))


def corrupt_json(folder, exports):
    (folder / "config.json").write_text("{broken")


def old_schema(folder, exports):
    edit_config(folder, lambda c: c.pop("schema"))


def consistent_swap(folder, exports):
    """A graph of other I/O with its sha256 recorded: the record's I/O no longer matches the graph."""
    shutil.copy(exports[1] / "vision.onnx", folder / "vision.onnx")
    shutil.copy(exports[1] / "vision.onnx.data", folder / "vision.onnx.data")
    other = json.loads((exports[1] / "config.json").read_text())["graphs"]["vision"]
    edit_config(folder, lambda c: c["graphs"]["vision"].update(sha256=other["sha256"],
                                                               external_data=other["external_data"]))


TAMPERING = {
    "swapped-graph": (swap_graph, "vision.onnx does not match the sha256 its config.json records"),
    "zeroed-sha256": (zero_sha256, "vision.onnx does not match the sha256 its config.json records"),
    "edited-keep": (edit_keep, "says keep 32, its vision graph keeps 64 tokens"),
    "truncated-graph": (truncate_graph, "vision.onnx does not match the sha256"),
    "missing-data": (drop_data, "lacks vision.onnx.data, which its config.json lists"),
    "missing-key": (drop_key, "config.json.graphs.vision lacks the key 'inputs'"),
    "mistyped-value": (wrong_type, "config.json.keep should be int, not 'sixty-four'"),
    "corrupt-json": (corrupt_json, "is not valid JSON"),
    "old-schema": (old_schema, "has no schema (an older vtp-export)"),
    "consistent-swap": (consistent_swap, "its inputs/outputs are not the ones config.json records"),
}


@pytest.mark.parametrize("case", TAMPERING)
def test_tampered_folders_are_refused(case, folder, exports):
    tamper, message = TAMPERING[case]
    tamper(folder, exports)
    with pytest.raises(RecordError, match=message.replace("(", "\\(").replace(")", "\\)")):
        read_export(folder)


@pytest.mark.parametrize("command", [["run", "{f}", "--prompt", "x"], ["lint", "{f}"], ["build", "{f}"],
                                     ["profile", "{f}", "--runs", "1"]])
def test_every_command_refuses_a_tampered_folder_in_one_line(command, folder, exports, capsys, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    swap_graph(folder, exports)
    assert main([part.format(f=folder) for part in command]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vtp-export: error: ") and err.count("\n") == 1 and "vision.onnx" in err
    assert not (tmp_path / "profile").exists()


def test_truncated_graph_with_its_sha256_recorded_is_one_line(folder):
    truncate_graph(folder, None)
    from vtp_export.records.codec import sha256

    edit_config(folder, lambda c: c["graphs"]["vision"].update(sha256=sha256(folder / "vision.onnx")))
    with pytest.raises(RecordError, match="is not a valid ONNX model"):
        read_export(folder)


def test_unreadable_files_are_one_line(folder, monkeypatch):
    from pathlib import Path

    real = Path.read_text

    def denied(self, *args, **kwargs):
        if self.name == "config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(RecordError, match="cannot read .*config.json: permission denied"):
        read_export(folder)


def test_decode_names_the_path_of_a_mistyped_entry():
    machine = {"cpu": "x", "cpu_threads_used": 1, "cpu_count": 2, "os": "", "python": "", "versions": {}, "gpu": None}
    data = {"producer": "vtp-export", "schema": "s", "created": "", "device": machine, "summary": [], "profiles": [3]}
    with pytest.raises(RecordError, match=r"report.profiles\[0\] should be an object"):
        decode(ProfileReport, data, "report")


def test_records_refuse_non_finite_numbers(tmp_path):
    with pytest.raises(RecordError, match="non-finite"):
        write_json(tmp_path / "x.json", {"tau": float("inf")})
    assert list(tmp_path.iterdir()) == []


# Each typed section of config.json and report.json, and its JSON as the code that made it wrote it when these
# were dicts: keys absent there stay absent (optional_key), keys written null stay null.
FIDELITY = Fidelity(precision="fp16", backend="onnxruntime 1.22.0 CPUExecutionProvider, Q/DQ rewrites off", samples=1,
                    images=2, token_overlap_min=1.0, token_overlap_mean=1.0, embeds_cosine_min=0.99991,
                    embeds_cosine_mean=0.99996, target=FidelityTarget(token_overlap_min=0.98, embeds_cosine_min=0.999),
                    meets_target=True)
FIDELITY_JSON = {"precision": "fp16", "backend": FIDELITY.backend, "samples": 1, "images": 2,
                 "token_overlap_min": 1.0, "token_overlap_mean": 1.0, "embeds_cosine_min": 0.99991,
                 "embeds_cosine_mean": 0.99996, "target": {"token_overlap_min": 0.98, "embeds_cosine_min": 0.999},
                 "meets_target": True}
LOWERED = LoweredGraph(precision="fp16", tool="nvidia-modelopt 0.47.0 ONNX AutoCast", float32_nodes=40, casts=12,
                       opset=19, graph_bytes={"fp32": 4000, "fp16": 2100}, seconds=1.5)
LOWERED_JSON = {"precision": "fp16", "tool": LOWERED.tool, "float32_nodes": 40, "casts": 12, "opset": 19,
                "graph_bytes": {"fp32": 4000, "fp16": 2100}, "seconds": 1.5}
QUANTIZED = QuantizedGraph(precision="int8", tool="nvidia-modelopt 0.47.0 ONNX PTQ", quantized_tensors=30,
                           calibration_batches=2, calibration_images=2, excluded_nodes=40, opset=19, seconds=4.0,
                           remainder=LOWERED, graph_bytes={"fp32": 4000, "int8": 1300}, fidelity=FIDELITY)
TYPED = {
    "lint": (LintResult(target="orin", opset=18, nodes=300, passed=True),
             {"target": "orin", "opset": 18, "nodes": 300, "passed": True}),
    "parser-not-checked": (ParserCheck(checked=False, reason="no TensorRT binding installed"),
                           {"checked": False, "reason": "no TensorRT binding installed"}),
    "parser-and-engine": (ParserCheck(checked=True, parser="tensorrt_rtx_bindings 1.2", layers=80, parse_seconds=0.1,
                                      engine_built=True, build_seconds=3.0),
                          {"checked": True, "parser": "tensorrt_rtx_bindings 1.2", "layers": 80, "parse_seconds": 0.1,
                           "engine_built": True, "build_seconds": 3.0}),
    "fidelity-of-a-text-graph-without-target": (
        Fidelity(precision="int8", backend="b", samples=1, images=1, embeds_cosine_min=0.99, embeds_cosine_mean=0.995),
        {"precision": "int8", "backend": "b", "samples": 1, "images": 1, "embeds_cosine_min": 0.99,
         "embeds_cosine_mean": 0.995}),
    "lowered": (dataclasses.replace(LOWERED, fidelity=FIDELITY), LOWERED_JSON | {"fidelity": FIDELITY_JSON}),
    "quantized": (QUANTIZED, {"precision": "int8", "tool": QUANTIZED.tool, "quantized_tensors": 30,
                              "calibration_batches": 2, "calibration_images": 2, "excluded_nodes": 40, "opset": 19,
                              "seconds": 4.0, "remainder": LOWERED_JSON, "graph_bytes": {"fp32": 4000, "int8": 1300},
                              "fidelity": FIDELITY_JSON}),
    "builder-flags": (FlagPrecision(precision="fp16", graph="fp32", engine="weakly typed TensorRT 8.5"),
                      {"precision": "fp16", "graph": "fp32", "engine": "weakly typed TensorRT 8.5"}),
    "engine-flags": (EngineFlags(precision="fp16", strongly_typed=True, workspace_mib=None, dynamic_batch=False,
                                 max_batch=None, timing_cache="timing.cache", monitor_memory=True),
                     {"precision": "fp16", "strongly_typed": True, "workspace_mib": None, "dynamic_batch": False,
                      "max_batch": None, "timing_cache": "timing.cache", "monitor_memory": True}),
    "parity-text": (Parity(samples=3, max_abs_diff=0.01, tolerance={"atol": 0.05, "rtol": 0.05}),
                    {"samples": 3, "max_abs_diff": 0.01, "tolerance": {"atol": 0.05, "rtol": 0.05}}),
    "parity-vision": (Parity(samples=3, max_abs_diff=0.01, tolerance={"atol": 0.05}, token_index_min_set_overlap=1.0),
                      {"samples": 3, "max_abs_diff": 0.01, "tolerance": {"atol": 0.05},
                       "token_index_min_set_overlap": 1.0}),
    "memory": (MemoryUse(peak_host_rss_mib=900), {"peak_host_rss_mib": 900}),
    "machine-without-jetson": (
        MachineRecord(cpu="EPYC", cpu_threads_used=2, cpu_count=2, os="Linux 6", python="3.11.7",
                      versions={"torch": "2.7"}, gpu=MachineGpu(name="H200", sm=90, driver=None)),
        {"cpu": "EPYC", "cpu_threads_used": 2, "cpu_count": 2, "os": "Linux 6", "python": "3.11.7",
         "versions": {"torch": "2.7"}, "gpu": {"name": "H200", "sm": 90, "driver": None}}),
    "machine-on-a-jetson": (
        MachineRecord(cpu="ARMv8", cpu_threads_used=8, cpu_count=12, os="Linux 5", python="3.10", versions={},
                      gpu=None, jetson=JetsonState(jetpack="6.1", nvpmodel="NV Power Mode: MAXN", jetson_clocks=None)),
        {"cpu": "ARMv8", "cpu_threads_used": 8, "cpu_count": 12, "os": "Linux 5", "python": "3.10", "versions": {},
         "gpu": None, "jetson": {"jetpack": "6.1", "nvpmodel": "NV Power Mode: MAXN", "jetson_clocks": None}}),
    "summary-row-without-unpruned-export": (
        SummaryRow(label="holov", method="holov", keep=64, visual_tokens=64, prompt_tokens=80, vision_graph_ms=9.0,
                   pruning_stage_ms=1.0, prefill_ms=20.0, prefill_p10_p90_ms=[19.0, 22.0], prefill_std_ms=1.0,
                   decode_ms_per_token=5.0, busy_machine=False),
        {"label": "holov", "method": "holov", "keep": 64, "visual_tokens": 64, "prompt_tokens": 80,
         "vision_graph_ms": 9.0, "pruning_stage_ms": 1.0, "prefill_ms": 20.0, "prefill_p10_p90_ms": [19.0, 22.0],
         "prefill_std_ms": 1.0, "decode_ms_per_token": 5.0, "busy_machine": False}),
}


@pytest.mark.parametrize("case", TYPED)
def test_typed_sections_keep_their_json_and_read_back(case):
    record, written = TYPED[case]
    assert encode(record) == written
    assert decode(type(record), json.loads(json.dumps(written)), case) == record
    if isinstance(record, (LoweredGraph, QuantizedGraph, FlagPrecision)):
        assert decode(GraphPrecision | None, written, case) == record  # GraphRecord.precision tells them apart


LLM = LlmFile(file="llm-f16.gguf", quant="f16", sha256="0" * 64, bytes=4, n_vocab=10, n_embd=8, n_layer=1,
              tokenizer="gpt2", source="random(seed=3)")


def test_graph_sections_round_trip_through_config_json(folder):
    sections = {"lint": TYPED["lint"][0], "tensorrt_parser": TYPED["parser-and-engine"][0], "precision": QUANTIZED}
    update_export(folder, {("graphs", "vision", name): value for name, value in sections.items()})
    vision = read_export(folder).graphs["vision"]
    assert (vision.lint, vision.tensorrt_parser, vision.precision) == tuple(sections.values())
    written = json.loads((folder / "config.json").read_text())["graphs"]["vision"]
    assert {name: written[name] for name in sections} == {name: encode(value) for name, value in sections.items()}


def test_engine_and_profile_records_round_trip(tmp_path):
    files = {"vision": EngineFile(file="vision.engine", sha256="0" * 64, bytes=1, onnx_sha256="1" * 64, build_s=2.0,
                                  layers=80, float32_layers=0, flags=TYPED["engine-flags"][0])}
    engine = EngineRecord(producer=PRODUCER, schema=ENGINE_SCHEMA, vtp_export_version="0", created="", export="e",
                          tensorrt="10.3", tensorrt_full="10.3.0", gpu=GpuRecord("Orin", 87), target="orin",
                          precision="fp16", engines=files, export_verification={"vision": None},
                          parity_with_onnxruntime={"vision": TYPED["parity-vision"][0],
                                                   "text": TYPED["parity-text"][0]})
    write_json(tmp_path / "config.json", engine)
    assert read_engine_record(tmp_path) == engine
    stats = StageStats(runs=1, p50_ms=1.0, p90_ms=1.0, p99_ms=1.0, mean_ms=1.0, std_ms=0.0, min_ms=1.0, max_ms=1.0)
    profile = Profile(export=ProfiledExport("e", "llava15-tiny", "holov", "holov", 64, "cpu", "onnxruntime",
                                            "llama.cpp"),
                      tokens=TokenCounts(64, 80, 2), llm=LlmInfo("random", 2, 64), stages={"prefill": stats},
                      memory=TYPED["memory"][0], load=MachineLoad(0.0, 0.0, False))
    report = ProfileReport(producer=PRODUCER, schema=PROFILE_SCHEMA, created="", profiles=[profile],
                           device=TYPED["machine-on-a-jetson"][0],
                           summary=[dataclasses.replace(TYPED["summary-row-without-unpruned-export"][0], ttft_ratio=1.0,
                                                        ttft_with_overhead_ratio=1.0, ideal_ratio=1.0)])
    write_json(tmp_path / "report.json", report)
    assert read_report(tmp_path / "report.json") == report


def test_update_export_rewrites_only_its_sections(folder):
    path = folder / "config.json"
    before = json.loads(path.read_text())
    before["note"] = {"written by": "someone else"}  # a key no record field knows is kept too
    path.write_text(json.dumps(before))
    record = update_export(folder, {("llm",): LLM})
    after = json.loads(path.read_text())
    assert record.llm == LLM and after.pop("llm") == encode(LLM)
    assert after == {key: value for key, value in before.items() if key != "llm"}
    update_export(folder, {("graphs", "vision", "float32_nodes"): ["a", "b"]})
    graphs = json.loads(path.read_text())["graphs"]
    assert graphs["vision"].pop("float32_nodes") == ["a", "b"]
    assert graphs["vision"] == {k: v for k, v in before["graphs"]["vision"].items() if k != "float32_nodes"}


@pytest.mark.parametrize("failure", ["write", "rename"])
def test_a_failed_update_leaves_the_old_file(folder, monkeypatch, failure):
    path = folder / "config.json"
    old, names = path.read_bytes(), sorted(p.name for p in folder.iterdir())
    if failure == "write":  # the disk fills half way through the new file
        real = os.fdopen

        class HalfWritten:
            def __init__(self, handle):
                self.file = real(handle, "w")

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.file.close()

            def write(self, text):
                self.file.write(text[:len(text) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fdopen", lambda handle, mode: HalfWritten(handle))
    else:
        def refused(source, destination):
            raise OSError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OSError):
        update_export(folder, {("llm",): LLM})
    monkeypatch.undo()
    assert path.read_bytes() == old and sorted(p.name for p in folder.iterdir()) == names


def test_update_export_refuses_what_would_not_read_back(folder):
    path = folder / "config.json"
    old = path.read_bytes()
    with pytest.raises(RecordError, match="config.json.keep should be int"):
        update_export(folder, {("keep",): "sixty-four"})
    with pytest.raises(ValueError, match="'nonsense' is not a section of an export record"):
        update_export(folder, {("nonsense",): 1})
    assert path.read_bytes() == old
    old_schema(folder, None)
    with pytest.raises(RecordError, match="has no schema"):
        update_export(folder, {("llm",): LLM})
