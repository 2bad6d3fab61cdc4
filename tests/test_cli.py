"""The command line as a user meets it: success output, listings, and one clean line for every bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vtp_export.cli import main

VTP_EXPORT = [sys.executable, "-m", "vtp_export"]
TINY = ["--model", "llava15-tiny", "--target", "cpu"]


def run_cli(args, cwd):
    return subprocess.run([*VTP_EXPORT, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_export_from_the_command_line(tmp_path):
    result = run_cli([*TINY, "--method", "visionzip", "--keep", "32", "--method-opt", "contextual=4"], tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "exports" / "llava15-tiny-visionzip-contextual-4-dominant-28-k32-cpu"
    assert f"wrote {out.relative_to(tmp_path)}" in result.stdout
    assert "token_index identical" in result.stdout
    assert result.stderr == ""
    config = json.loads((out / "config.json").read_text())
    assert config["method"]["options"] == {"dominant": 28, "contextual": 4}


def test_rerun_replaces_its_own_folder_but_not_what_a_user_put_there(tmp_path, capsys):
    out = tmp_path / "e"
    args = [*TINY, "--method", "fastervlm", "--keep", "8", "--out", str(out), "--verify-samples", "1"]
    assert main(args) == 0
    first = (out / "vision.onnx").stat().st_ino
    assert main(args) == 0
    assert (out / "vision.onnx").stat().st_ino != first, "the rerun wrote a new folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]
    (out / "notes.txt").write_text("mine")
    (out / "engine").mkdir()
    capsys.readouterr()
    assert main(args) == 2
    assert "holds what vtp-export did not write there (engine, notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"
    assert main([*args, "--replace"]) == 0
    assert not (out / "notes.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["e"]


@pytest.mark.parametrize("command,expected", [
    ("models", "llava15-tiny"), ("methods", "VisionZip@3151f6d"), ("targets", "sm_87"),
    ("methods", "text-conditioned (question -> text.onnx); reads CLIP's text tower and joint embedding space; "
                "reference: FreedomIntelligence/TRIM@f5a232d"),
    ("methods", "--method-opt variant=<reference|paper> (default reference)"),
])
def test_listings(command, expected, capsys):
    assert main([command]) == 0
    assert expected in capsys.readouterr().out


@pytest.fixture(scope="module")
def bad_folders(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    corrupt = root / "corrupt"
    shutil.copytree(tiny_checkpoint, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage" * 64)
    not_llava = root / "not-llava"
    shutil.copytree(tiny_checkpoint, not_llava)
    (not_llava / "config.json").write_text(json.dumps({"model_type": "clip"}))
    foreign = root / "foreign-out"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    return root


BAD_INPUTS = {
    "keep-zero": (["--method", "holov", "--keep", "0"], "out of range"),
    "keep-negative": (["--method", "holov", "--keep", "-3"], "out of range"),
    "keep-not-integer": (["--method", "holov", "--keep", "6.5"], "invalid int value"),
    "keep-all-tokens": (["--method", "fastervlm", "--keep", "576"], "the model has 576 tokens"),
    "keep-too-many": (["--method", "visionzip", "--keep", "5000"], "out of range"),
    "keep-missing": (["--method", "holov"], "needs --keep"),
    "keep-with-none": (["--method", "none", "--keep", "64"], "keeps all 576 tokens"),
    "unknown-method": (["--method", "fastv", "--keep", "64"], "unknown method 'fastv'"),
    "unknown-option": (["--method", "holov", "--keep", "64", "--method-opt", "alpha=2"], "has no option 'alpha'"),
    "bad-option-choice": (["--method", "holov", "--keep", "64", "--method-opt", "variant=best"],
                          "is not one of reference, paper"),
    "paper-crops-not-square": (["--method", "holov", "--keep", "64", "--method-opt", "variant=paper",
                                "--method-opt", "crops=10"], "square number of crops"),
    "prumerge-keep-1": (["--method", "prumerge", "--keep", "1"], "needs --keep >= 2"),
    "cdpruner-keep-above-rank": (["--method", "cdpruner", "--keep", "100"], "rank <= the LLM width 64"),
    "text-weights-for-image-method": (["--method", "fastervlm", "--keep", "8", "--text-weights", "clip"],
                                      "--text-weights is for text-conditioned methods"),
    "bad-option-value": (["--method", "holov", "--keep", "64", "--method-opt", "crops=many"], "is not a int"),
    "bad-split": (["--method", "visionzip", "--keep", "64", "--method-opt", "dominant=70"], "must equal --keep"),
    "seed-overflow": (["--method", "random", "--keep", "64", "--method-opt", f"seed={10**23}"], f"seed='{10**23}' is out of range"),
    "tau-infinite": (["--method", "holov", "--keep", "64", "--method-opt", "variant=paper", "--method-opt", "tau=inf"],
                     "tau='inf' is not a finite number"),
    "tau-nan": (["--method", "holov", "--keep", "64", "--method-opt", "variant=paper", "--method-opt", "tau=nan"],
                "tau='nan' is not a finite number"),
    "grid-for-llava15": (["--method", "holov", "--keep", "64", "--grid", "2x2"], "--grid is not an option of"),
    "export-seed-overflow": (["--method", "holov", "--keep", "64", "--seed", str(2**64)], "--seed"),
}


@pytest.mark.parametrize("args,message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_method_input(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_clean_failure(main([*TINY, *args]), capsys, message, tmp_path)


FOLDER_CASES = {
    "unknown-model": ["--model", "llava99"],
    "unknown-target": ["--target", "xavier"],
    "missing-weights": ["--weights", "{root}/nowhere"],
    "empty-weights": ["--weights", "{root}/empty"],
    "corrupt-weights": ["--weights", "{root}/corrupt"],
    "not-a-llava": ["--weights", "{root}/not-llava"],
    "both-weight-flags": ["--weights", "{root}/empty", "--random-weights"],
    "foreign-out": ["--random-weights", "--out", "{root}/foreign-out"],
}
FOLDER_MESSAGES = {
    "unknown-model": "unknown model 'llava99'", "unknown-target": "unknown target 'xavier'",
    "missing-weights": "does not exist", "empty-weights": "is empty", "corrupt-weights": "corrupt weights file",
    "not-a-llava": "not a llava15 checkpoint", "both-weight-flags": "not allowed with argument",
    "foreign-out": "was not written by vtp-export",
}


@pytest.mark.parametrize("case", FOLDER_CASES)
def test_bad_model_target_or_folder(case, bad_folders, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    chosen = {"--model": "llava15", "--target": "orin"}
    overrides = [a.format(root=bad_folders) for a in FOLDER_CASES[case]]
    flags = [a for a in overrides if a == "--random-weights"]
    pairs = [a for a in overrides if a != "--random-weights"]
    chosen |= dict(zip(pairs[::2], pairs[1::2]))
    argv = ["--method", "holov", "--keep", "64", *flags, *(x for pair in chosen.items() for x in pair)]
    assert_clean_failure(main(argv), capsys, FOLDER_MESSAGES[case], tmp_path)
    assert (bad_folders / "foreign-out" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in bad_folders.iterdir()) == ["corrupt", "empty", "foreign-out", "not-llava"]


def assert_clean_failure(code, capsys, message, cwd: Path):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("vtp-export: error: "), captured.err
    assert message in lines[0]
    assert "Traceback" not in captured.err + captured.out
    assert not (cwd / "exports").exists()


def test_console_script_error_has_no_traceback(tmp_path):
    result = run_cli([*TINY, "--method", "holov", "--keep", "0"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_failed_verification_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from vtp_export.export import job as exporter
    from vtp_export.export.verify import Tolerance, compare_with_onnxruntime

    def exact(path, inputs, expected, exact):  # no float difference allowed: rounding must fail it
        return compare_with_onnxruntime(path, inputs, expected, Tolerance(atol=0.0, rtol=0.0), exact)

    monkeypatch.setattr(exporter, "compare_with_onnxruntime", exact)
    monkeypatch.chdir(tmp_path)
    assert_clean_failure(main([*TINY, "--method", "fastervlm", "--keep", "8"]), capsys, "image_embeds differs from PyTorch", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_text_conditioned_method_without_clip_weights_names_the_flag(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    code = main(["--model", "llava15", "--weights", str(tiny_checkpoint), "--method", "trim", "--keep", "16",
                 "--target", "cpu"])
    assert_clean_failure(code, capsys, "pass --text-weights DIR or --random-weights", tmp_path)
