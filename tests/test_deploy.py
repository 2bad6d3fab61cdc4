"""The export folder is the deployable unit: exported here from a saved checkpoint, moved to another path as one
copies it to a device, the checkpoint deleted, it answers in a fresh venv that has the built wheel with the
device extras and no PyTorch, with the same greedy ids as here. Each missing piece is refused in one line."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import save_tiny_clip, save_tiny_llava, save_tiny_qwen
from vtp_export.errors import PipelineError, UsageError
from vtp_export.export.job import export
from vtp_export.export.plan import ExportRequest
from vtp_export.records.export import CLIP_TOKENIZER_FOLDER, RUNTIME_FOLDER, read_export
from vtp_export.runtime import Pipeline
from vtp_export.runtime.llm.gguf import export_llm

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "What is in the picture?"
NEW_TOKENS = 6


def picture(path: Path) -> Path:
    Image.fromarray((np.random.default_rng(3).random((240, 300, 3)) * 255).astype(np.uint8)).save(path)
    return path


def answer_ids(folder: Path, image: Path, **pipeline) -> list[int]:
    with Pipeline.from_dir(folder, **pipeline) as pipe:
        return pipe.answer(QUESTION, [image], max_new_tokens=NEW_TOKENS).token_ids


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory) -> Path:
    """A fresh venv holding the wheel built from this tree with the device extras (`vtp-export[llama]`)."""
    root = tmp_path_factory.mktemp("device-install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "wheels"), str(ROOT)], check=True, capture_output=True, timeout=600)
    wheel = next((root / "wheels").glob("vtp_export-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", f"{wheel}[llama]"], check=True, capture_output=True,
                   timeout=1800)
    return venv


def on_device(venv: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=cwd, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def device_answer(venv: Path, folder: Path, image: Path) -> list[int]:
    code = f"""
import json, sys
from vtp_export.runtime import Pipeline
with Pipeline.from_dir({str(folder)!r}, llm_backend="llama.cpp", backend="onnxruntime") as pipe:
    ids = pipe.answer({QUESTION!r}, [{str(image)!r}], max_new_tokens={NEW_TOKENS}).token_ids
assert "torch" not in sys.modules, "the runtime imported torch"
print(json.dumps(ids))
"""
    result = on_device(venv, code, folder.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def deployed(tmp_path: Path, method: str, text_conditioned: bool = False) -> tuple[Path, list[int], Path]:
    """Export llava15 from a saved checkpoint (and CLIP folder), convert its LLM to a GGUF, answer here; then
    move the folder to another path and delete the checkpoint: (moved folder, ids here, image)."""
    checkpoint = save_tiny_llava(tmp_path / "checkpoint")
    clip = save_tiny_clip(tmp_path / "clip") if text_conditioned else None
    folder = export(ExportRequest(model="llava15", method=method, keep=64, target="cpu", weights=checkpoint,
                                  text_weights=clip, out=tmp_path / "workstation" / "export", verify_samples=1))
    export_llm(folder, quant="f32")
    image = picture(tmp_path / "image.png")
    expected = answer_ids(folder, image, llm_backend="llama.cpp", backend="onnxruntime")
    moved = tmp_path / "device" / "renamed-export"
    moved.parent.mkdir()
    shutil.move(folder, moved)
    shutil.rmtree(checkpoint)
    if clip is not None:
        shutil.rmtree(clip)
    return moved, expected, image


@pytest.mark.slow
@pytest.mark.llama
@pytest.mark.parametrize("method,text_conditioned", [("holov", False), ("trim", True)])
def test_moved_folder_answers_without_checkpoint_or_torch(device_venv, tmp_path, method, text_conditioned):
    moved, expected, image = deployed(tmp_path, method, text_conditioned)
    record = read_export(moved)
    carried = {entry.file for entry in record.runtime_files}
    assert f"{RUNTIME_FOLDER}/config.json" in carried
    assert any(name.startswith(f"{CLIP_TOKENIZER_FOLDER}/") for name in carried) == text_conditioned
    assert answer_ids(moved, image, llm_backend="llama.cpp", backend="onnxruntime") == expected
    assert device_answer(device_venv, moved, image) == expected
    lint = subprocess.run([str(device_venv / "bin/vtp-export"), "lint", str(moved), "--target", "orin"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert lint.returncode == 0 and "vision.onnx: fits orin" in lint.stdout, lint.stderr


@pytest.mark.slow
@pytest.mark.llama
def test_device_install_has_no_torch_and_refuses_exporter_commands(device_venv, tmp_path):
    listed = subprocess.run([str(device_venv / "bin/pip"), "list", "--format=freeze"], capture_output=True,
                            text=True, check=True).stdout
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listed.splitlines()}
    assert {"vtp-export", "llama-cpp-python", "onnxruntime", "transformers"} <= installed
    assert not {"torch", "onnxscript"} & installed, "the device install pulled the exporter's stack"
    for command in (["--model", "llava15-tiny", "--method", "holov", "--keep", "64", "--target", "cpu"],
                    ["llm", str(tmp_path), "--format", "gguf"]):
        result = subprocess.run([str(device_venv / "bin/vtp-export"), *command], capture_output=True, text=True,
                                cwd=tmp_path, timeout=300)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "pip install 'vtp-export[export]'" in result.stderr
    targets = subprocess.run([str(device_venv / "bin/vtp-export"), "targets"], capture_output=True, text=True,
                             cwd=tmp_path, timeout=300)
    assert targets.returncode == 0 and "orin" in targets.stdout  # the wheel ships its targets


@pytest.mark.slow
def test_qwen_onnx_only_folder_runs_its_llm_through_llm_option(tmp_path):
    """Qwen2.5-VL's LLM on transformers: the moved folder refuses without its checkpoint, naming both ways to
    give the LLM, and answers as before with --llm pointing at the checkpoint's new place."""
    checkpoint = save_tiny_qwen(tmp_path / "checkpoint")
    folder = export(ExportRequest(model="qwen2.5-vl", method="holov", keep=32, target="cpu", weights=checkpoint,
                                  model_options={"image_size": "224x224"}, out=tmp_path / "workstation" / "export",
                                  verify_samples=1))
    image = picture(tmp_path / "image.png")
    expected = answer_ids(folder, image)
    llm = shutil.copytree(checkpoint, tmp_path / "elsewhere" / "qwen-llm")
    moved = shutil.move(folder, tmp_path / "moved")
    shutil.rmtree(checkpoint)
    with pytest.raises(PipelineError) as error:
        Pipeline.from_dir(moved)
    message = str(error.value)
    assert "\n" not in message and "is not on this machine" in message
    assert "--llm FOLDER" in message and "vtp-export llm" in message
    assert answer_ids(moved, image, llm=llm) == expected


@pytest.mark.slow
def test_llm_conversion_of_a_moved_folder_asks_for_the_checkpoint(tmp_path):
    checkpoint = save_tiny_llava(tmp_path / "checkpoint")
    folder = export(ExportRequest(model="llava15", method="fastervlm", keep=64, target="cpu", weights=checkpoint,
                                  out=tmp_path / "export", verify_samples=1))
    shutil.rmtree(checkpoint)
    with pytest.raises(UsageError, match="is not on this machine: pass --llm FOLDER"):
        export_llm(folder, quant="f32")


@pytest.mark.parametrize("name,change,message", [
    (f"{RUNTIME_FOLDER}/tokenizer.json", "delete", "lacks model/tokenizer.json, which its config.json lists"),
    (f"{RUNTIME_FOLDER}/config.json", "edit", "does not match the sha256 its config.json records"),
])
def test_a_missing_or_changed_runtime_file_is_refused(cached_export, tmp_path, name, change, message):
    folder = cached_export.copy(tmp_path / "export", "llava15-tiny", "fastervlm", 64, verify_samples=1)
    path = folder / name
    if change == "delete":
        path.unlink()
    else:
        path.write_text(path.read_text().replace("llava", "llama", 1))
    with pytest.raises(PipelineError, match=message):
        Pipeline.from_dir(folder)


def test_random_export_carries_its_config_and_stand_in_tokenizer(cached_export, tmp_path):
    """A random-weight export runs from the folder alone too: its default config and stand-in tokenizer."""
    folder = cached_export.copy(tmp_path / "export", "llava15-tiny", "fastervlm", 64, verify_samples=1)
    moved = shutil.move(folder, tmp_path / "elsewhere")
    config = json.loads((moved / RUNTIME_FOLDER / "config.json").read_text())
    assert config["model_type"] == "llava" and config["text_config"]["hidden_size"] == 64
    image = picture(tmp_path / "image.png")
    assert len(answer_ids(moved, image, llm_layers=1)) == NEW_TOKENS
