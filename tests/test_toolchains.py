"""The toolchain registry: a target carries the toolchain its `runtime` names, and what that toolchain declares
(precision, lint, recipe, engines, vision backend) is what the export, build and lint do and say."""

import dataclasses

import pytest

from vtp_export.cli import main
from vtp_export.errors import UsageError
from vtp_export.export.plan import ExportRequest, plan_export
from vtp_export.targets import TARGETS, load_target
from vtp_export.toolchains import TOOLCHAINS, Toolchain, labels

NPU = Toolchain(name="npu", label="NPU", vision_backend="npu-runtime", lowers_precision=False, lints=False,
                parser_check=False, writes_recipe=False, builds_engines=False, target_fields=("gpu_arch",))
NPU_TARGET = 'name = "{name}"\nsummary = "x"\nruntime = "npu"\nopset = 18\nmax_opset = 20\nmemory_budget_mib = 1\n' \
             'precisions = ["fp32"]\ndefault_precision = "fp32"\n'


@pytest.fixture
def npu(monkeypatch, tmp_path):
    """The npu toolchain and a target `board` running it, registered for one test."""
    monkeypatch.setitem(TOOLCHAINS._entries, NPU.name, NPU)
    path = tmp_path / "board.toml"
    path.write_text(NPU_TARGET.format(name="board") + 'gpu_arch = "sm_87"\n')
    monkeypatch.setitem(TARGETS._entries, "board", load_target(path))
    return TARGETS.get("board")


def test_every_target_carries_the_toolchain_its_runtime_names():
    for name, target in TARGETS.items():
        assert target.toolchain is TOOLCHAINS.get(target.runtime), name
    assert TARGETS.get("cpu").toolchain.vision_backend == "onnxruntime"
    tensorrt = TARGETS.get("orin").toolchain
    assert (tensorrt.lowers_precision, tensorrt.lints, tensorrt.writes_recipe, tensorrt.builds_engines) == (True,) * 4


def test_the_target_record_keeps_its_keys():
    assert "toolchain" not in TARGETS.get("orin").as_record() and TARGETS.get("orin").as_record()["runtime"] == "tensorrt"


def test_an_unknown_runtime_is_refused(tmp_path):
    path = tmp_path / "board.toml"
    path.write_text(NPU_TARGET.format(name="board"))
    with pytest.raises(ValueError, match=r"board.toml: runtime 'npu' is not one of onnxruntime, tensorrt$"):
        load_target(path)


def test_a_toolchain_declares_the_fields_its_targets_set(npu, tmp_path):
    assert npu.toolchain is NPU
    path = tmp_path / "bare.toml"
    path.write_text(NPU_TARGET.format(name="bare"))
    with pytest.raises(ValueError, match=r"bare.toml: a NPU target names its gpu_arch$"):
        load_target(path)


def test_labels_name_the_toolchains_with_a_capability(npu):
    assert labels(lambda t: t.lints) == "TensorRT"
    assert labels(lambda t: t.vision_backend == "npu-runtime") == "NPU"
    assert labels(lambda t: not t.builds_engines) == "NPU or onnxruntime"


@pytest.mark.parametrize("target, message", [
    ("cpu", "--precision is for TensorRT targets; cpu runs the fp32 graph in onnxruntime"),
    ("board", "--precision is for TensorRT targets; board runs the fp32 graph in npu-runtime"),
])
def test_precision_is_for_the_toolchains_that_lower_it(npu, target, message):
    request = ExportRequest(model="llava15-tiny", method="fastervlm", target=target, keep=64, precision="fp16")
    with pytest.raises(UsageError) as error:
        plan_export(request)
    assert str(error.value) == message
    assert plan_export(dataclasses.replace(request, precision=None)).method.keep == 64


def test_lint_refuses_a_toolchain_without_lint(npu, cached_export, capsys):
    folder = cached_export("llava15-tiny", "fastervlm", 64, "cpu", verify_samples=1)
    assert main(["lint", str(folder)]) == 2
    assert "target cpu runs onnxruntime; the lint checks TensorRT targets" in capsys.readouterr().err
    assert main(["lint", str(folder), "--target", "board"]) == 2
    assert "target board runs npu-runtime; the lint checks TensorRT targets" in capsys.readouterr().err
    assert main(["lint", str(folder), "--target", "orin"]) == 0
    assert "fits orin" in capsys.readouterr().out
