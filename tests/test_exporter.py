"""Export round trips on llava15-tiny: graph signature, verification, TensorRT parser + CPU engine build."""

import hashlib
import json

import numpy as np
import pytest

from vtp_export.exporter import ExportRequest, export
from vtp_export.graph_io import CONFIG_JSON, IMAGE_EMBEDS, PIXEL_VALUES, TOKEN_INDEX, VISION_ONNX
from vtp_export.models import geometry_of, llava15_tiny_config
from vtp_export.recipe import BUILD_SCRIPT
from vtp_export.methods import METHODS
from vtp_export.signature import GOLDEN_KEEP, GOLDEN_MODEL, golden_path, graph_signature, read_signature
from vtp_export.verify import onnxruntime_session, random_pixel_values

@pytest.fixture(scope="module", params=METHODS.names(),
                ids=lambda m: f"{m}-k{'all' if m == 'none' else GOLDEN_KEEP}-orin-build")
def orin_export(request, tmp_path_factory):
    method = request.param
    out = tmp_path_factory.mktemp("exports") / method
    keep = None if method == "none" else GOLDEN_KEEP
    export(ExportRequest(model=GOLDEN_MODEL, method=method, keep=keep, target="orin", out=out, tensorrt_check="build"))
    return method, out


def test_signature_matches_golden(orin_export):
    method, out = orin_export
    signature = graph_signature(out / VISION_ONNX)
    keep = signature["outputs"][1]["shape"][1]
    assert signature == read_signature(golden_path(GOLDEN_MODEL, method, keep)), (
        "graph changed: review, then run tools/update_graphs.py"
    )


def test_graph_is_static_and_free_of_data_dependent_ops(orin_export):
    _, out = orin_export
    signature = graph_signature(out / VISION_ONNX)
    for value in signature["inputs"] + signature["outputs"]:
        assert all(isinstance(d, int) and d > 0 for d in value["shape"])
    assert "NonZero" not in signature["ops"]


def test_config_records_the_export(orin_export):
    method, out = orin_export
    config = json.loads((out / CONFIG_JSON).read_text())
    assert config["producer"] == "vtp-export" and config["method"]["name"] == method
    assert config["graph"]["sha256"] == hashlib.sha256((out / VISION_ONNX).read_bytes()).hexdigest()
    for name, digest in config["graph"]["external_data"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert [v["name"] for v in config["graph"]["outputs"]] == [IMAGE_EMBEDS, TOKEN_INDEX]
    assert set(config["versions"]) >= {"torch", "transformers", "onnx", "onnxruntime"}
    assert config["verification"]["passed"] and config["verification"]["token_index"] == "identical"
    assert config["target"]["name"] == "orin" and config["target"]["gpu_arch"] == "sm_87"


def test_tensorrt_parser_accepted_and_engine_built(orin_export):
    _, out = orin_export
    check = json.loads((out / CONFIG_JSON).read_text())["tensorrt_parser"]
    assert check["checked"] and check["engine_built"] and check["layers"] > 0


def test_device_build_recipe(orin_export):
    _, out = orin_export
    script = (out / BUILD_SCRIPT).read_text()
    assert "--onnx=vision.onnx" in script and "--fp16" in script and "--saveEngine=vision.engine" in script
    assert "memPoolSize=workspace:4096M" in script


def test_leaves_no_staging_folders(orin_export):
    _, out = orin_export
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_224px_checkpoint_exports_unchanged(tiny_checkpoint_224, tmp_path):
    out = export(ExportRequest(model="llava15", method="holov", keep=32, target="cpu", weights=tiny_checkpoint_224,
                               out=tmp_path / "e"))
    config = json.loads((out / CONFIG_JSON).read_text())
    assert config["model"]["geometry"]["num_patches"] == 256
    assert config["graph"]["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert config["graph"]["outputs"][1]["shape"] == [1, 32]
    assert "tensorrt_parser" not in config and not (out / BUILD_SCRIPT).exists()


def test_dynamic_batch_runs_any_batch(tmp_path):
    out = export(ExportRequest(model="llava15-tiny", method="visionzip", keep=64, target="orin", out=tmp_path / "e",
                               dynamic_batch=True, batch=2))
    signature = graph_signature(out / VISION_ONNX)
    assert isinstance(signature["inputs"][0]["shape"][0], str)
    assert signature["inputs"][0]["shape"][1:] == [3, 336, 336]
    session = onnxruntime_session(out / VISION_ONNX)
    geometry = geometry_of(llava15_tiny_config())
    for batch in (1, 3):
        embeds, index = session.run(None, {PIXEL_VALUES: random_pixel_values(geometry, batch, 0).numpy()})
        assert embeds.shape == (batch, 64, 64) and index.shape == (batch, 64)
    single, _ = session.run(None, {PIXEL_VALUES: random_pixel_values(geometry, 1, 0).numpy()})
    np.testing.assert_allclose(single[0], embeds[0], atol=1e-5)
    assert "--maxShapes=pixel_values:64x3x336x336" in (out / BUILD_SCRIPT).read_text()


def test_real_weights_export_records_their_folder(tiny_checkpoint, tmp_path):
    out = export(ExportRequest(model="llava15", method="fastervlm", keep=16, target="cpu", weights=tiny_checkpoint,
                               out=tmp_path / "e", verify_samples=1))
    assert json.loads((out / CONFIG_JSON).read_text())["model"]["weights"] == str(tiny_checkpoint.resolve())
