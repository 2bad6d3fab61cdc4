"""The README's commands are the product's promises: its Quickstart is what CI runs, its examples run."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(section: str) -> list[list[str]]:
    body = README.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip().splitlines() for block in re.findall(r"```\n(.*?)```", body, re.S)]


QUICKSTART = code_blocks("Quickstart")[0]
SETUP, TEST = QUICKSTART if len(QUICKSTART) == 2 else (None, None)


def test_quickstart_is_two_commands_setup_then_tests():
    assert len(QUICKSTART) == 2
    assert SETUP.startswith("python3 -m venv .venv && ") and "vtp-export --model llava15 " in SETUP
    assert "pytest" in TEST


def test_ci_runs_the_quickstart_install_and_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install = SETUP.split(" && ")[1]
    assert install.replace(" install ", " install -q ") in ci
    assert ci[-1] == TEST


@pytest.mark.slow
def test_quickstart_main_job(tmp_path):
    """The design card's command, full size with random weights, as the Quickstart runs it."""
    command = shlex.split(SETUP.split(" && ")[-1])
    assert command[0] == ".venv/bin/vtp-export"
    result = subprocess.run([sys.executable, "-m", "vtp_export", *command[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "a successful command prints nothing on stderr"
    out = tmp_path / "exports" / "llava15-holov-k64-orin"
    assert "token_index identical" in result.stdout and "TensorRT ONNX parser" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["build_engine.sh", "config.json", "model", "vision.onnx",
                                                     "vision.onnx.data"]


EXAMPLES = [line for section in ("Command line", "Models") for block in code_blocks(section) for line in block
            if "-tiny " in line or line.strip() == "vtp-export methods"]


def test_the_examples_are_found():
    """An empty list would leave test_readme_example_runs with nothing to run, silently."""
    assert len(EXAMPLES) >= 5 and "vtp-export methods" in EXAMPLES
    assert {shlex.split(line)[shlex.split(line).index("--model") + 1] for line in EXAMPLES if "--model" in line} == {
        "llava15-tiny", "llava-next-tiny", "qwen2.5-vl-tiny", "qwen3-vl-tiny"}


@pytest.mark.slow
@pytest.mark.parametrize("line", EXAMPLES)
def test_readme_example_runs(line, tmp_path):
    args = shlex.split(line)
    assert args[0] == "vtp-export"
    result = subprocess.run([sys.executable, "-m", "vtp_export", *args[1:]], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "a successful command prints nothing on stderr"


def test_every_registered_method_and_target_is_documented():
    from vtp_export.methods import METHODS
    from vtp_export.targets import TARGETS

    for name in METHODS.names():
        assert f"| `{name}` |" in README
    for name in TARGETS.names():
        assert f"`{name}`" in README
