import pytest

from vtp_export.targets import TARGETS, TARGETS_DIR, load_target


def test_every_file_is_registered():
    assert sorted(p.stem for p in TARGETS_DIR.glob("*.toml")) == TARGETS.names()
    assert {"cpu", "orin"} <= set(TARGETS.names())


def test_orin_is_jetpack6_tensorrt_10_3_sm87_fp16():
    orin = TARGETS.get("orin")
    assert (orin.gpu_arch, orin.tensorrt, orin.default_precision, orin.uses_tensorrt) == ("sm_87", "10.3", "fp16", True)
    assert "fp8" not in orin.precisions and orin.opset <= orin.max_opset <= 20


def test_cpu_uses_onnxruntime():
    assert not TARGETS.get("cpu").uses_tensorrt


def test_opset_above_ceiling_is_refused(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\nsummary = "x"\nruntime = "tensorrt"\nopset = 21\nmax_opset = 17\n'
                    'precisions = ["fp16"]\ndefault_precision = "fp16"\nmemory_budget_mib = 1\n')
    with pytest.raises(ValueError, match="ceiling"):
        load_target(path)
