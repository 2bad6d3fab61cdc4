"""Export round trips on the tiny models: golden graph signatures of the fp32 graphs (every method on every
golden model, each also linted and parsed for Orin), verification, and on llava15-tiny the default fp16
graphs of a TensorRT target through the TensorRT parser and a CPU engine build."""

import hashlib
import json

import numpy as np
import pytest

from tests.goldens import GOLDEN_KEEPS, golden_exports, golden_path, golden_text_path, read_signature
from vtp_export.checkpoint.locate import CLIP_SUBFOLDER
from vtp_export.export.job import export
from vtp_export.export.plan import ExportRequest
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.onnx.inputs import random_pixel_values
from vtp_export.onnx.names import (
    CONFIG_JSON, IMAGE_EMBEDS, INPUT_IDS, NUM_VALID, PIXEL_VALUES, TEXT_EMBEDS, TEXT_ONNX, TOKEN_INDEX, VISION_ONNX,
)
from vtp_export.onnx.sessions import onnxruntime_session
from vtp_export.onnx.signature import graph_signature
from vtp_export.precision.transforms import graph_precision
from vtp_export.targets import TARGETS
from vtp_export.trt.lint import lint_graph
from vtp_export.trt.parser import check_with_tensorrt_parser
from vtp_export.trt.recipe import BUILD_SCRIPT

pytestmark = pytest.mark.slow

TINY = "llava15-tiny"
GOLDEN = {(model, name): spec for model in GOLDEN_KEEPS for name, spec in golden_exports(model).items()}
TINY_GOLDEN = {name: spec for (model, name), spec in GOLDEN.items() if model == TINY}


@pytest.fixture(scope="module", params=list(TINY_GOLDEN), ids=lambda name: f"{name}-{TINY}-orin-build")
def orin_export(request, tmp_path_factory):
    name = request.param
    spec = TINY_GOLDEN[name]
    out = tmp_path_factory.mktemp("exports") / name
    export(ExportRequest(model=TINY, method=spec.method, keep=spec.keep, target="orin", out=out,
                         method_options=spec.method_options, tensorrt_check="build"))
    return name, out


@pytest.fixture(scope="module", params=list(GOLDEN), ids=lambda key: f"{key[1]}-{key[0]}-cpu")
def cpu_export(request, cached_export):
    """The fp32 graph of each golden export (what the golden signatures pin), from the session's cache: the
    runtime, records, profiling and llama.cpp tests read the same folders."""
    model, name = request.param
    spec = GOLDEN[request.param]
    return model, name, cached_export(model, spec.method, spec.keep, "cpu", method_options=spec.method_options,
                                      model_options=spec.model_options, verify_samples=1)


def test_signature_matches_golden(cpu_export):
    model, name, out = cpu_export
    spec = GOLDEN[(model, name)]
    method = spec.method
    signature = graph_signature(out / VISION_ONNX)
    assert signature["outputs"][1]["shape"][1] == spec.tokens
    assert signature == read_signature(golden_path(model, name, spec.tokens)), (
        "graph changed: review, then run tools/update_graphs.py"
    )
    form = METHODS.get(method).for_signals(MODELS.get(model).signals)
    if form.text_conditioned:
        assert graph_signature(out / TEXT_ONNX) == read_signature(golden_text_path(model))
    else:  # prompt-conditioned methods take text_embeds too, but the runtime computes it: no text graph
        assert not (out / TEXT_ONNX).exists()
    text_input = form.text_conditioned or form.prompt_conditioned
    assert [i["name"] for i in signature["inputs"]] == [PIXEL_VALUES, *([TEXT_EMBEDS] if text_input else [])]


def test_every_golden_graph_fits_tensorrt(cpu_export):
    _, _, out = cpu_export
    paths = sorted(out.glob("*.onnx"))
    assert paths and out / VISION_ONNX in paths
    for path in paths:
        assert lint_graph(path, TARGETS.get("orin")).passed
        assert check_with_tensorrt_parser(path, build_engine=False).layers > 0


def test_graph_is_static_and_free_of_data_dependent_ops(orin_export):
    _, out = orin_export
    paths = sorted(out.glob("*.onnx"))
    assert paths and out / VISION_ONNX in paths
    for path in paths:
        signature = graph_signature(path)
        for value in signature["inputs"] + signature["outputs"]:
            assert all(isinstance(d, int) and d > 0 for d in value["shape"])
        assert "NonZero" not in signature["ops"]


def test_config_records_the_export(orin_export):
    name, out = orin_export
    method = TINY_GOLDEN[name].method
    config = json.loads((out / CONFIG_JSON).read_text())
    assert config["producer"] == "vtp-export" and config["method"]["name"] == method
    text_conditioned = METHODS.get(method).text_conditioned
    assert sorted(config["graphs"]) == (["text", "vision"] if text_conditioned else ["vision"])
    for graph in config["graphs"].values():
        assert graph["sha256"] == hashlib.sha256((out / graph["file"]).read_bytes()).hexdigest()
        for name, digest in graph["external_data"].items():
            assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
        assert graph["verification"]["passed"]
    vision = config["graphs"]["vision"]
    assert [v["name"] for v in vision["outputs"]][:2] == [IMAGE_EMBEDS, TOKEN_INDEX]
    expected_selection = "identical" if METHODS.get(method).exact_selection else "set overlap"
    assert vision["verification"]["selection"].startswith(expected_selection)
    assert set(config["versions"]) >= {"torch", "transformers", "onnx", "onnxruntime"}
    assert config["target"]["name"] == "orin" and config["target"]["gpu_arch"] == "sm_87"


def test_tensorrt_parser_accepted_and_engine_built(orin_export):
    _, out = orin_export
    for graph in json.loads((out / CONFIG_JSON).read_text())["graphs"].values():
        check = graph["tensorrt_parser"]
        assert check["checked"] and check["engine_built"] and check["layers"] > 0


def test_default_precision_is_an_fp16_graph_with_its_fidelity(orin_export):
    _, out = orin_export
    for role, graph in json.loads((out / CONFIG_JSON).read_text())["graphs"].items():
        assert graph_precision(out / graph["file"]) == graph["precision"]["precision"] == "fp16"
        fidelity = graph["precision"]["fidelity"]
        assert fidelity["embeds_cosine_min"] >= 0.999 and fidelity["images"] >= 3
        if role == "vision":
            assert 0 < fidelity["token_overlap_min"] <= 1.0


def test_device_build_recipe(orin_export):
    _, out = orin_export
    script = (out / BUILD_SCRIPT).read_text()
    for graph in json.loads((out / CONFIG_JSON).read_text())["graphs"]:
        assert f"--onnx={graph}.onnx" in script and f"--saveEngine={graph}.engine" in script
    assert "--stronglyTyped" in script and "memPoolSize=workspace:4096M" in script  # TensorRT 10.3: strongly typed
    assert "--fp16" not in script and "--precisionConstraints" not in script
    config = json.loads((out / CONFIG_JSON).read_text())
    assert config["device_build"]["precision"] == "fp16"
    for graph in config["graphs"].values():
        assert graph["float32_nodes"] == [], "strongly typed: precision is in the graph, no layer pinning"
        assert graph["lint"]["passed"] and graph["lint"]["target"] == "orin" and graph["lint"]["opset"] == 18


def test_leaves_no_staging_folders(orin_export):
    _, out = orin_export
    assert [p.name for p in out.parent.iterdir()] == [out.name]


def test_224px_checkpoint_exports_unchanged(tiny_checkpoint_224, cached_export):
    out = cached_export("llava15", "holov", 32, "cpu", weights=tiny_checkpoint_224)
    config = json.loads((out / CONFIG_JSON).read_text())
    assert config["model"]["geometry"]["grid_rows"] * config["model"]["geometry"]["grid_cols"] == 256
    vision = config["graphs"]["vision"]
    assert vision["inputs"][0]["shape"] == [1, 3, 224, 224]
    assert vision["outputs"][1]["shape"] == [1, 32]
    assert vision["tensorrt_parser"] is None and not (out / BUILD_SCRIPT).exists()


def test_dynamic_batch_runs_any_batch(cached_export):
    out = cached_export("llava15-tiny", "visionzip", 64, "orin", dynamic_batch=True, batch=2)
    signature = graph_signature(out / VISION_ONNX)
    assert isinstance(signature["inputs"][0]["shape"][0], str)
    assert signature["inputs"][0]["shape"][1:] == [3, 336, 336]
    session = onnxruntime_session(out / VISION_ONNX)
    tiny = MODELS.get("llava15-tiny")
    geometry = tiny.geometry(tiny.default_config(), {})
    for batch in (1, 3):
        embeds, index = session.run(None, {PIXEL_VALUES: random_pixel_values(geometry, batch, 0)})
        assert embeds.shape == (batch, 64, 64) and index.shape == (batch, 64)
    single, _ = session.run(None, {PIXEL_VALUES: random_pixel_values(geometry, 1, 0)})
    np.testing.assert_allclose(single[0], embeds[0], atol=1e-5)
    assert "--maxShapes=pixel_values:64x3x336x336" in (out / BUILD_SCRIPT).read_text()


def test_real_weights_export_records_their_folder(tiny_bundle, cached_export):
    # the runtime tests (tests/runtime/test_pipeline.py) answer with this very export
    out = cached_export("llava15", "fastervlm", 16, "cpu", weights=tiny_bundle, verify_samples=1)
    assert json.loads((out / CONFIG_JSON).read_text())["model"]["weights"] == {
        "kind": "folder", "path": str(tiny_bundle.resolve())}


def test_text_conditioned_export_reads_clip_from_the_checkpoints_clip_folder(tiny_bundle, cached_export):
    assert (tiny_bundle / CLIP_SUBFOLDER).is_dir()
    out = cached_export("llava15", "trim", 16, "cpu", weights=tiny_bundle, verify_samples=1,
                        method_options={"count": "iqr"})
    config = json.loads((out / CONFIG_JSON).read_text())
    assert config["model"]["text_weights"]["path"] == str((tiny_bundle / CLIP_SUBFOLDER).resolve())
    assert [o["name"] for o in config["graphs"]["vision"]["outputs"]] == [IMAGE_EMBEDS, TOKEN_INDEX, NUM_VALID]
    assert config["graphs"]["text"]["inputs"] == [{"name": INPUT_IDS, "dtype": "int64", "shape": [1, 77]}]


def test_text_weights_flag_and_dynamic_batch(tiny_checkpoint, tiny_clip, cached_export):
    out = cached_export("llava15", "cdpruner", 16, "orin", weights=tiny_checkpoint, text_weights=tiny_clip,
                        verify_samples=1, dynamic_batch=True)
    assert json.loads((out / CONFIG_JSON).read_text())["model"]["text_weights"]["path"] == str(tiny_clip.resolve())
    script = (out / BUILD_SCRIPT).read_text()
    assert "--maxShapes=pixel_values:64x3x336x336,text_embeds:64x16" in script
    assert "--maxShapes=input_ids:64x77" in script
    session = onnxruntime_session(out / TEXT_ONNX)
    ids = np.full((3, 77), 49407, dtype=np.int64)
    assert session.run(None, {INPUT_IDS: ids})[0].shape == (3, 16)


@pytest.mark.parametrize("method", ["fastervlm", "trim"])
def test_jetpack5_graphs_are_opset_17_without_layer_norm_ops(method, cached_export):
    # tests/test_builder.py rebuilds a copy of the fastervlm one at another precision
    out = cached_export("llava15-tiny", method, 16, "jetpack5-orin", verify_samples=1)
    config = json.loads((out / CONFIG_JSON).read_text())
    for graph in config["graphs"].values():
        signature = graph_signature(out / graph["file"])
        assert signature["opset"] == 17 and "LayerNormalization" not in signature["ops"]
        assert graph["lint"]["passed"] and graph["tensorrt_parser"]["checked"]
        assert graph["verification"]["passed"]


def test_fp32_precision_has_no_fp16_flags(cached_export):
    out = cached_export("llava15-tiny", "fastervlm", 16, "h100", verify_samples=1, precision="fp32")
    script = (out / BUILD_SCRIPT).read_text()
    assert "--fp16" not in script and "--layerPrecisions" not in script and "workspace:16384M" in script
