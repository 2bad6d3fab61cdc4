"""The LLM folder vLLM loads (vtp-export llm DIR --format vllm; vtp-export serve on first start), in this venv: the
transformers backend's weights in the key layout vLLM maps, recorded with sha256 and checked before serving."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from vtp_export.cli import main
from vtp_export.errors import UsageError
from vtp_export.models import MODELS
from vtp_export.records.export import read_export, runtime_config
from vtp_export.runtime.llm.transformers import TransformersLanguageModel
from vtp_export.serve.engine import check_vllm_folder
from vtp_export.serve.served import QWEN2_5_VL_PLUGIN, served_model


@pytest.fixture
def llava(cached_export, tmp_path):
    return cached_export.copy(tmp_path / "llava", "llava15-tiny", "visionzip", 64)


def test_written_weights_are_the_transformers_backends(llava, capsys):
    assert main(["llm", str(llava), "--format", "vllm", "--llm-layers", "1"]) == 0
    assert "llm-vllm" in capsys.readouterr().out
    record = read_export(llava)
    assert record.vllm.architecture == "LlavaForConditionalGeneration" and record.vllm.n_layer == 1
    model = MODELS.get("llava15-tiny")
    reference = TransformersLanguageModel.random(model, runtime_config(llava, model), 0, 1)
    written = load_file(llava / "llm-vllm" / "model.safetensors")
    expected = {f"model.language_model.{k}": v for k, v in reference.decoder.state_dict().items()}
    expected["lm_head.weight"] = reference.head.weight
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[key], expected[key]) for key in expected)
    config = json.loads((llava / "llm-vllm" / "config.json").read_text())
    assert config["text_config"]["num_hidden_layers"] == 1 and config["architectures"] == [record.vllm.architecture]
    assert {"tokenizer.json", "preprocessor_config.json", "processor_config.json"} <= set(record.vllm.files)


def test_written_again_in_place_and_checked_before_use(llava):
    assert main(["llm", str(llava), "--format", "vllm", "--llm-layers", "1"]) == 0
    assert main(["llm", str(llava), "--format", "vllm"]) == 0
    record = read_export(llava)
    assert record.vllm.n_layer == 2 and check_vllm_folder(llava, record.vllm) == llava / "llm-vllm"
    (llava / "llm-vllm" / "tokenizer.json").write_text("{}")
    with pytest.raises(UsageError, match="does not match the sha256"):
        check_vllm_folder(llava, record.vllm)


def test_an_untied_random_head_is_written_untied(cached_export, tmp_path):
    """Qwen2.5-VL's config ties the head to the embeddings; the random LLM's head is its own."""
    folder = cached_export.copy(tmp_path / "qwen", "qwen2.5-vl-tiny", "divprune", 24, model_options={"image_size":
                                                                                                     "224x336"})
    assert main(["llm", str(folder), "--format", "vllm"]) == 0
    assert read_export(folder).vllm.architecture == QWEN2_5_VL_PLUGIN
    config = json.loads((folder / "llm-vllm" / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["text_config"]["tie_word_embeddings"] is False
    assert "lm_head.weight" in load_file(folder / "llm-vllm" / "model.safetensors")


def test_models_vllm_does_not_serve_are_refused_in_one_line():
    with pytest.raises(UsageError, match="'gemma3'") as error:
        served_model("gemma3", "gemma3")
    assert "\n" not in str(error.value)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="this venv has vLLM")
def test_serve_without_vllm_names_the_serving_venv(llava, capsys):
    assert main(["serve", str(llava)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "tools/setup_serve_venv.sh" in error
