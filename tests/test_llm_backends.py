"""The LLM backend registry: each backend's declaration (positions, layer cut, devices, dtypes, weights file,
PyTorch) is what the Pipeline and the CLI enforce and show, so a backend is one module plus its entry."""

import subprocess
import sys
from pathlib import Path

import pytest

from vtp_export.cli import main
from vtp_export.errors import PipelineError
from vtp_export.runtime import Pipeline
from vtp_export.runtime.llm.backends import LLM_BACKENDS, LlmBackend, llm_backend, llm_backend_names, register
from vtp_export.runtime.llm.protocol import LlmRequest

ROOT = Path(__file__).resolve().parent.parent
STUB = LlmBackend(name="stub", module=__name__, position_policies=("original",),
                  position_refusal="the stub numbers image tokens by their patches",
                  layer_cut_refusal="the stub has no layers to cut", devices=("cpu",), dtypes=("float16",),
                  llm_format="plan")


class StubLanguageModel:
    name = "stub"

    def __init__(self, request: LlmRequest) -> None:
        self.request = request

    def close(self) -> None:
        pass


def open_llm(request: LlmRequest) -> StubLanguageModel:
    return StubLanguageModel(request)


@pytest.fixture
def stub(monkeypatch) -> LlmBackend:
    monkeypatch.setitem(LLM_BACKENDS._entries, STUB.name, STUB)
    return STUB


@pytest.fixture(scope="module")
def folder(cached_export) -> Path:
    return cached_export("llava15-tiny", "fastervlm", 64, "cpu", verify_samples=1)


def test_the_default_comes_first_and_an_unknown_name_is_one_line():
    assert llm_backend_names() == ["transformers", "llama.cpp"]
    with pytest.raises(PipelineError, match=r"^llm_backend='vllm' is not one of transformers, llama.cpp$"):
        llm_backend("vllm")


def test_each_backend_module_has_open_llm():
    for name, backend in LLM_BACKENDS.items():
        module = __import__(backend.module, fromlist=["open_llm"])
        assert callable(module.open_llm), name


def test_the_registry_and_the_torch_free_backends_import_without_torch():
    code = """import importlib, sys
sys.modules["torch"] = None  # import torch raises ImportError
from vtp_export.runtime.llm.backends import LLM_BACKENDS
for name, backend in LLM_BACKENDS.items():
    if not backend.needs_torch:
        importlib.import_module(backend.module)
print(sorted(name for name, backend in LLM_BACKENDS.items() if not backend.needs_torch))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['llama.cpp']"


def test_a_backend_that_needs_torch_names_one_that_does_not(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # torch cannot be found
    request = LlmRequest(Path("x"), None, None, None, None, "cpu", "float32")
    with pytest.raises(PipelineError, match=r"^the transformers LLM backend needs PyTorch; on a device without it "
                                            r"use llm_backend='llama.cpp' \(--llm-backend llama.cpp\)$"):
        LLM_BACKENDS.get("transformers").open(request)


def test_position_policies_come_from_the_runtimes():
    with pytest.raises(ValueError, match="position policies"):
        register(LlmBackend(name="diagonal", module=__name__, position_policies=("diagonal",)))
    assert "diagonal" not in LLM_BACKENDS


def test_a_registered_backend_opens_with_the_request(stub, folder):
    with Pipeline.from_dir(folder, llm_backend="stub", position_ids="original", dtype="float16") as pipe:
        request = pipe.llm.request
    assert isinstance(pipe.llm, StubLanguageModel) and pipe.position_ids == "original"
    assert (request.folder, request.llm, request.llm_layers, request.device, request.dtype) == (
        folder, None, None, "cpu", "float16")
    assert request.record.model.name == "llava15-tiny"


@pytest.mark.parametrize("arguments, message", [
    ({}, "position_ids='sequential': the stub numbers image tokens by their patches"),  # LLaVA's default
    ({"position_ids": "original", "llm_layers": 2}, "llm_layers: the stub has no layers to cut"),
    ({"position_ids": "original", "device": "cuda:1", "dtype": "float16"},
     "device='cuda:1': the stub LLM backend runs on cpu"),
    ({"position_ids": "original"}, "dtype='float32': the stub LLM backend loads float16"),
])
def test_a_registered_backend_refuses_what_it_declares(stub, folder, arguments, message):
    with pytest.raises(PipelineError) as error:
        Pipeline.from_dir(folder, llm_backend="stub", **arguments)
    assert str(error.value) == message


def test_the_cli_offers_and_describes_registered_backends(stub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")  # help on one line per option
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = capsys.readouterr().out
    assert "{transformers,llama.cpp,stub}" in help_text
    assert "transformers (default) or llama.cpp (a GGUF from vtp-export llm) or stub (a PLAN from vtp-export llm)" \
        in help_text
    assert "the LLM: a HF checkpoint folder (transformers) or a GGUF file (llama.cpp) or a PLAN file (stub)" in help_text
    assert "transformers, stub: the LLM's dtype" in help_text
    monkeypatch.chdir(tmp_path)
    assert main(["profile", "--model", "llava15-tiny", "--method", "holov", "--keep", "64",
                 "--llm-backend", "stub"]) == 2
    assert ("a sweep's scratch exports have no PLAN: with --llm-backend stub pass --llm FILE.plan (from vtp-export "
            "llm DIR --format plan on an export of the same model)") in capsys.readouterr().err
