import pytest

from vtp_export.targets import TARGETS, TARGETS_DIR, load_target

TENSORRT_TARGETS = ["orin", "orin-nx", "orin-nano", "jetpack5-orin", "thor", "a100", "l4", "h100"]


def test_every_file_is_registered():
    assert sorted(p.stem for p in TARGETS_DIR.glob("*.toml")) == TARGETS.names()
    assert set(TARGETS.names()) == {"cpu", *TENSORRT_TARGETS}


def test_orin_is_jetpack6_tensorrt_10_3_sm87_fp16():
    orin = TARGETS.get("orin")
    assert (orin.gpu_arch, orin.tensorrt_range, orin.default_precision, orin.toolchain.name) == ("sm_87", "10.3", "fp16", "tensorrt")
    assert "fp8" not in orin.precisions and orin.opset <= orin.max_opset <= 20 and orin.strongly_typed


def test_orin_family_shares_the_stack_with_smaller_budgets():
    orin, nx, nano = (TARGETS.get(n) for n in ("orin", "orin-nx", "orin-nano"))
    assert orin.tensorrt_range == nx.tensorrt_range == nano.tensorrt_range and orin.sm == nx.sm == nano.sm
    assert orin.memory_budget_mib > nx.memory_budget_mib > nano.memory_budget_mib
    assert not nano.dla


def test_jetpack5_rules():
    jp5 = TARGETS.get("jetpack5-orin")
    assert (jp5.tensorrt_range, jp5.opset, jp5.max_opset, jp5.topk_k_initializer) == ("8.5", 17, 17, True)
    assert "LayerNormalization" in jp5.unsupported_ops and not jp5.strongly_typed


@pytest.mark.parametrize("name", TENSORRT_TARGETS)
def test_fp8_only_from_sm89(name):
    target = TARGETS.get(name)
    assert ("fp8" in target.precisions) == (target.sm >= 89)
    assert target.workspace_mib and target.memory_budget_mib and target.tensorrt_min


def test_tensorrt_version_range():
    a100 = TARGETS.get("a100")
    assert a100.accepts_tensorrt("10.0.1") and a100.accepts_tensorrt("10.13.2.6") and not a100.accepts_tensorrt("8.6.1")
    assert TARGETS.get("thor").accepts_tensorrt("10.13.3") and not TARGETS.get("thor").accepts_tensorrt("10.3.0")
    for name in ("a100", "l4", "h100"):  # datacenter: TensorRT 11 too (strongly typed only)
        target = TARGETS.get(name)
        assert target.accepts_tensorrt("11.0.0") and target.accepts_tensorrt("11.7.1") and not target.accepts_tensorrt("12.0")
    assert not TARGETS.get("orin").accepts_tensorrt("11.0.0")


@pytest.mark.parametrize("name", TENSORRT_TARGETS)
def test_bf16_and_fp8_types_from_tensorrt_10(name):
    target = TARGETS.get(name)
    assert target.has_bf16_fp8_types == (name != "jetpack5-orin") == target.strongly_typed


def test_cpu_uses_onnxruntime():
    assert TARGETS.get("cpu").toolchain.name == "onnxruntime"


BASE = 'name = "bad"\nsummary = "x"\nruntime = "tensorrt"\nopset = 18\nmax_opset = 20\nmemory_budget_mib = 1\n'


@pytest.mark.parametrize("body,message", [
    (BASE.replace("opset = 18", "opset = 21") + 'precisions = ["fp16"]\ndefault_precision = "fp16"\n'
     'gpu_arch = "sm_87"\ntensorrt_min = "10.3"\ntensorrt_max = "10.3"\n', "ceiling"),
    (BASE + 'precisions = ["fp8"]\ndefault_precision = "fp8"\ngpu_arch = "sm_87"\ntensorrt_min = "10.3"\n'
     'tensorrt_max = "10.3"\n', "fp8 needs sm_89"),
    (BASE + 'precisions = ["fp16"]\ndefault_precision = "fp16"\n', "names its gpu_arch"),
    (BASE + 'precisions = ["fp16"]\ndefault_precision = "fp32"\n', "must come from"),
    (BASE + 'precisions = ["fp16"]\ndefault_precision = "fp16"\ncolour = "green"\n', "unexpected keyword"),
])
def test_bad_target_files_are_refused(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        load_target(path)


def test_a_target_is_named_like_its_file(tmp_path):
    path = tmp_path / "other.toml"
    path.write_text(BASE + 'precisions = ["fp16"]\ndefault_precision = "fp16"\ngpu_arch = "sm_87"\n'
                           'tensorrt_min = "10.3"\ntensorrt_max = "10.3"\n')
    with pytest.raises(ValueError, match="name 'bad' differs from the file name 'other'"):
        load_target(path)


@pytest.mark.slow
def test_the_wheel_ships_every_target_file(tmp_path):
    """An installed package knows its targets: the TOML files are package data, not files beside the repo."""
    import shutil
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    root, source = Path(__file__).resolve().parent.parent, tmp_path / "source"  # setuptools writes build/ there
    shutil.copytree(root / "vtp_export", source / "vtp_export", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
                    str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("vtp_export-*.whl")
    shipped = {Path(name).stem for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".toml")}
    assert shipped == set(TARGETS.names())
