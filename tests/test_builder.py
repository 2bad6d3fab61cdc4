"""vtp-export build: the device-side recipe where this machine is not the target, and the TensorRT
builder path itself, run here with TensorRT-RTX's CPU-only builder."""

import json

import pytest

from vtp_export.cli import main
from vtp_export.errors import RecordError, UsageError
from vtp_export.records.export import GraphRecord, TensorSpec, read_export
from vtp_export.targets import TARGETS
from vtp_export.trt.builder import build, build_engine, why_not_here
from vtp_export.trt.device import Device
from vtp_export.trt.recipe import BUILD_SCRIPT, trtexec_arguments

tensorrt_rtx_bindings = pytest.importorskip("tensorrt_rtx_bindings",
                                            reason="TensorRT-RTX (the [tensorrt-check] extra) is not installed")

pytestmark = [pytest.mark.slow, pytest.mark.trt]

ORIN = TARGETS.get("orin")
NO_TENSORRT = Device(tensorrt=None, gpu_name=None, sm=None, jetpack=None)


@pytest.fixture(scope="module")
def orin_trim(cached_export):
    """Read only: no test here builds into it or rewrites its recipe (a build without TensorRT at the recorded
    precision writes nothing; the session cache checks)."""
    return cached_export("llava15-tiny", "trim", 16, "orin", verify_samples=1, dynamic_batch=True)


def test_cross_target_explains_how_to_build_on_the_device(orin_trim):
    outcome = build(orin_trim, device=NO_TENSORRT)
    assert outcome.engine_folder is None
    assert outcome.message.startswith("no TensorRT here: engines are built on the device")
    assert outcome.message.endswith(f"run there: bash {BUILD_SCRIPT} (fp16)") and "Jetson AGX Orin" in outcome.message
    assert not (orin_trim / "engine").exists()


def test_out_is_refused_where_no_engine_is_built(orin_trim, tmp_path):
    with pytest.raises(UsageError, match="--out names where engines go, and none are built here"):
        build(orin_trim, out=tmp_path / "engines", device=NO_TENSORRT)
    assert not (tmp_path / "engines").exists()


def test_strongly_typed_recipe_builds_the_graphs_precision(orin_trim):
    script = orin_trim / BUILD_SCRIPT
    assert "--stronglyTyped" in script.read_text() and "--fp16" not in script.read_text()
    assert "--onnx=text.onnx" in script.read_text()
    assert build(orin_trim, device=NO_TENSORRT).message.endswith("(fp16)")
    assert read_export(orin_trim).device_build.precision == "fp16"


def test_weakly_typed_build_at_another_precision_rewrites_the_recipe_and_its_record(cached_export, tmp_path):
    # a copy: the build rewrites the recipe and the record (tests/test_exporter.py reads the cached one)
    out = cached_export.copy(tmp_path / "e", "llava15-tiny", "fastervlm", 16, "jetpack5-orin", verify_samples=1)
    script = out / BUILD_SCRIPT
    assert "--precisionConstraints=obey" in script.read_text()
    before = json.loads((out / "config.json").read_text())
    build(out, precision="fp32", device=NO_TENSORRT)
    record = read_export(out)
    after = json.loads((out / "config.json").read_text())
    for graph in (*before["graphs"].values(), *after["graphs"].values()):
        graph.pop("float32_nodes")
    assert {**after, "device_build": None} == {**before, "device_build": None}, "the build updates its section only"
    assert "--fp16" not in script.read_text()
    assert record.device_build.precision == "fp32" and all(not g.float32_nodes for g in record.graphs.values())
    assert record.device_build.commands[0].split()[1:] == script.read_text().splitlines()[-1].split()[1:]
    build(out, device=NO_TENSORRT)
    assert "--fp16" not in script.read_text(), "a plain build keeps the recorded precision"
    build(out, precision="fp16", device=NO_TENSORRT)
    assert "--layerPrecisions=" in script.read_text() and ":fp32" in script.read_text()
    assert read_export(out).device_build.precision == "fp16"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_weakly_typed_recipe_pins_the_score_path():
    """TensorRT 8.5 has no strong typing: fp16 from the builder flag, float32_nodes pinned per layer."""
    jetpack5 = TARGETS.get("jetpack5-orin")
    graph = GraphRecord(file="vision.onnx", sha256="", external_data={}, opset=17, nodes=1, dynamic_batch=False,
                        inputs=[TensorSpec("pixel_values", "float32", [1, 3, 336, 336])], outputs=[],
                        float32_nodes=["node_topk"])
    args = trtexec_arguments(jetpack5, graph, "fp16")
    assert "--fp16" in args and "--precisionConstraints=obey" in args and "--layerPrecisions=node_topk:fp32" in args
    assert "--stronglyTyped" not in args
    assert "--fp16" not in trtexec_arguments(jetpack5, graph, "fp32")


@pytest.mark.parametrize("precision,message", [
    ("fp8", "target orin (sm_87) does not support fp8 (supports: fp16, int8, fp32)"),
    ("int8", "is a fp16 graph and TensorRT 10.3 builds it strongly typed, in the graph's precision: export with "
             "--precision int8"),
    ("fp32", "export with --precision fp32"),
])
def test_unsupported_precision(orin_trim, precision, message):
    with pytest.raises(UsageError, match=message.replace("(", "\\(").replace(")", "\\)")):
        build(orin_trim, precision=precision, device=NO_TENSORRT)


def test_not_an_export_folder(tmp_path):
    with pytest.raises(RecordError, match="does not exist"):
        read_export(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"producer": "someone"}))
    with pytest.raises(RecordError, match="was not written by vtp-export"):
        read_export(tmp_path)


def test_cpu_export_has_no_engine(cached_export):
    out = cached_export("llava15-tiny", "fastervlm", 64, "cpu", verify_samples=1)  # a golden export
    with pytest.raises(UsageError, match="runs onnxruntime: there is no engine to build"):
        build(out)


@pytest.mark.parametrize("device,reason", [
    (Device("10.3.0.30", "Orin", 87, "6"), None),
    (Device("10.3.0", "NVIDIA H100", 90, None), "this GPU is NVIDIA H100 (sm_90), the target is sm_87"),
    (Device("10.7.0", "Orin", 87, "6"), "TensorRT 10.7.0 here, the target ships TensorRT 10.3"),
    (Device("10.3.0", None, None, None), "no CUDA GPU here"),
])
def test_which_machines_build_for_orin(device, reason):
    assert why_not_here(ORIN, device) == reason


def test_builder_path_builds_engines_with_tensorrt_rtx(orin_trim, tmp_path):
    """The same build_engine the device runs, with TensorRT-RTX (CPU-only, strongly typed: the fp16 graph)."""
    record = read_export(orin_trim)
    cache = tmp_path / "timing.cache"
    for graph in record.graphs.values():
        engine = tmp_path / f"{graph.file}.engine"
        entry = build_engine(tensorrt_rtx_bindings, orin_trim / graph.file, engine, ORIN, "fp16", graph, cache,
                             progress=lambda _: None)
        assert engine.stat().st_size == entry.bytes > 0 and entry.layers > 0 and entry.onnx_sha256 == graph.sha256
        assert entry.flags.dynamic_batch and entry.flags.max_batch == 64
        assert entry.flags.strongly_typed and entry.float32_layers == 0
    assert cache.is_file()


@pytest.fixture
def no_tensorrt_here(monkeypatch):
    """The command line as on a machine without TensorRT or a GPU, wherever the suite runs (a Jetson with
    TensorRT would otherwise take the on-device build branch)."""
    from vtp_export.trt import builder

    monkeypatch.setattr(builder, "this_device", lambda: NO_TENSORRT)


def test_cli_build_and_lint(orin_trim, capsys, no_tensorrt_here):
    assert main(["build", str(orin_trim)]) == 0
    assert "engines are built on the device" in capsys.readouterr().out
    assert main(["lint", str(orin_trim)]) == 0
    assert "vision.onnx: fits orin" in capsys.readouterr().out
    assert main(["lint", str(orin_trim), "--target", "jetpack5-orin"]) == 2
    assert "opset 18 is above the target's ceiling 17" in capsys.readouterr().err


def test_export_with_build_flag_explains_the_device_build(tmp_path, capsys, no_tensorrt_here):
    assert main(["--model", "llava15-tiny", "--method", "fastervlm", "--keep", "8", "--target", "orin-nano",
                 "--out", str(tmp_path / "e"), "--verify-samples", "1", "--build"]) == 0
    out = capsys.readouterr().out
    assert "engines are built on the device; copy" in out and "Jetson Orin Nano" in out
    assert "workspace:1024M" in (tmp_path / "e" / BUILD_SCRIPT).read_text()
