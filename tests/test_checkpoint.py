"""Reading the vision side of local HF LLaVA checkpoints, and every way a folder can be wrong."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlavaForConditionalGeneration

from vtp_export.checkpoint.load import load_clip_text, load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.errors import WeightsError
from vtp_export.models import MODELS

LLAVA15 = MODELS.get("llava15")


def load(folder):
    source = WeightsFolder(folder)
    return load_vision_stack(LLAVA15, read_model_config(LLAVA15, source), {}, source)


def clip_of(folder, checkpoint):
    return load_clip_text(LLAVA15, read_model_config(LLAVA15, WeightsFolder(checkpoint)), WeightsFolder(folder))


def test_loads_the_same_weights_as_transformers(tiny_checkpoint):
    hf = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint)
    stack = load(tiny_checkpoint)
    for name, tensor in hf.model.vision_tower.state_dict().items():
        assert torch.equal(stack.tower.state_dict()[name], tensor), name
    for name, tensor in hf.model.multi_modal_projector.state_dict().items():
        assert torch.equal(stack.projector.state_dict()[name], tensor), name


def test_legacy_sharded_layout_loads(tiny_checkpoint, tmp_path):
    """llava-hf on the hub: `vision_tower.vision_model.*` keys, fp16, sharded with an index."""
    tensors = load_file(tiny_checkpoint / "model.safetensors")
    renamed = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v.half() for k, v in tensors.items()}
    names = sorted(renamed)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: renamed[k].contiguous() for k in keys}, tmp_path / file)
    index = {"weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(tiny_checkpoint / "config.json", tmp_path)
    stack = load(tmp_path)
    key = "vision_tower.encoder.layers.0.self_attn.q_proj.weight"
    assert torch.equal(stack.tower.state_dict()["encoder.layers.0.self_attn.q_proj.weight"], tensors[key].half().float())


def copy_of(checkpoint, tmp_path):
    target = tmp_path / "ckpt"
    shutil.copytree(checkpoint, target)
    return target


def test_missing_folder(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load(tmp_path / "nope")


def test_empty_folder(tmp_path):
    with pytest.raises(WeightsError, match="is empty"):
        load(tmp_path)


def test_corrupt_config(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="corrupt"):
        load(folder)


def test_not_a_llava(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, tmp_path)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(WeightsError, match="not a llava15 checkpoint"):
        load(folder)


def test_corrupt_weights(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, tmp_path)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt weights file"):
        load(folder)


def test_no_weight_files(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="no \\*.safetensors"):
        load(folder)


def test_missing_vision_tensors(tiny_checkpoint, tmp_path):
    folder = copy_of(tiny_checkpoint, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    save_file({k: v for k, v in tensors.items() if "layers.1." not in k}, folder / "model.safetensors")
    with pytest.raises(WeightsError, match="lacks vision weights"):
        load(folder)


def test_clip_text_side_loads_the_same_weights_as_transformers(tiny_checkpoint, tiny_clip):
    from transformers import CLIPModel

    clip = clip_of(tiny_clip, tiny_checkpoint)
    hf = CLIPModel.from_pretrained(tiny_clip)
    assert torch.equal(clip.visual_projection.weight, hf.visual_projection.weight)
    assert torch.equal(clip.text.text_projection.weight, hf.text_projection.weight)
    assert torch.equal(clip.text.text_model.final_layer_norm.weight, hf.text_model.final_layer_norm.weight)


def test_clip_folder_errors(tiny_checkpoint, tiny_clip, tmp_path):
    with pytest.raises(WeightsError, match="is not a CLIP checkpoint"):
        clip_of(tiny_checkpoint, tiny_checkpoint)
    other = tmp_path / "wide"
    shutil.copytree(tiny_clip, other)
    raw = json.loads((other / "config.json").read_text())
    raw["vision_config"]["hidden_size"] = 48
    (other / "config.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match="do not fit this vision tower"):
        clip_of(other, tiny_checkpoint)
    text_only = tmp_path / "no-visual"
    shutil.copytree(tiny_clip, text_only)
    tensors = load_file(text_only / "model.safetensors")
    del tensors["visual_projection.weight"]
    save_file(tensors, text_only / "model.safetensors")
    with pytest.raises(WeightsError, match="lacks CLIP text weights: visual_projection.weight"):
        clip_of(text_only, tiny_checkpoint)
