"""An engine is refused, in one clear line, on another TensorRT version or GPU."""

import json

import pytest

from vtp_export.errors import EngineMismatchError, RecordError
from vtp_export.records.engine import ENGINE_SCHEMA, EngineRecord, GpuRecord, read_engine_record
from vtp_export.trt import device as engine
from vtp_export.trt.device import Device, check_engine_matches

ORIN_ENGINE = EngineRecord(
    producer="vtp-export", schema=ENGINE_SCHEMA, vtp_export_version="0", created="", export="/e", tensorrt="10.3",
    tensorrt_full="10.3.0.30", gpu=GpuRecord("Orin", 87), target="orin", precision="fp16", engines={},
    export_verification={}, parity_with_onnxruntime={}, jetpack="6",
)


def test_same_tensorrt_minor_and_sm_is_accepted():
    check_engine_matches(ORIN_ENGINE, Device(tensorrt="10.3.0.30", gpu_name="Orin", sm=87, jetpack="6"))


@pytest.mark.parametrize("device,shown", [
    (Device("10.13.0", "NVIDIA H100 80GB HBM3", 90, None), "TensorRT 10.13.0, NVIDIA H100 80GB HBM3 (sm_90)"),
    (Device("10.7.0", "Orin", 87, "6"), "TensorRT 10.7.0, Orin (sm_87), JetPack 6"),
    (Device(None, None, None, None), "no TensorRT, no CUDA GPU"),
])
def test_other_device_is_refused_with_both_sides_named(device, shown):
    with pytest.raises(EngineMismatchError) as error:
        check_engine_matches(ORIN_ENGINE, device)
    message = str(error.value)
    assert "built with TensorRT 10.3 for Orin (sm_87), JetPack 6" in message and shown in message


def test_engine_folder_errors(tmp_path):
    with pytest.raises(RecordError, match="has no config.json: not a vtp-export engine folder"):
        read_engine_record(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(RecordError, match="not valid JSON"):
        read_engine_record(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"producer": "vtp-export", "graphs": {}}))
    with pytest.raises(RecordError, match="no schema"):
        read_engine_record(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"producer": "vtp-export", "schema": ENGINE_SCHEMA}))
    with pytest.raises(RecordError, match="lacks the key 'vtp_export_version'"):
        read_engine_record(tmp_path)


@pytest.mark.parametrize("line,jetpack", [
    ("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64", "6"),
    ("# R35 (release), REVISION: 5.0, GCID: 35550185, BOARD: t186ref", "5"),
])
def test_jetpack_from_the_l4t_release(tmp_path, monkeypatch, line, jetpack):
    release = tmp_path / "nv_tegra_release"
    release.write_text(line + "\n")
    monkeypatch.setattr(engine, "TEGRA_RELEASE", release)
    assert engine.jetpack_line() == jetpack
