"""The exports of issue 18 on a LLaVA checkpoint of a shape no other test uses (CLIP 224 px, patch 14, width 72,
5 layers, 6 heads, feature layer -2; LLaMA width 104; q/k projections x6 so attention is peaked as in a trained
CLIP), saved with save_pretrained: each export verifies, and its graph's module equals the official code."""

import shutil

import pytest
import torch
from transformers import (
    CLIPConfig, CLIPModel, LlavaConfig, LlavaForConditionalGeneration, LlavaNextConfig,
    LlavaNextForConditionalGeneration,
)

from tests.methods.sweep_towers import PEAKED_QK_SCALE
from tests.methods.test_sweep import check_case, llava15_official, next_official
from vtp_export.checkpoint.load import load_clip_text, load_vision_stack
from vtp_export.checkpoint.locate import CLIP_SUBFOLDER, read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.export.job import export
from vtp_export.export.plan import ExportRequest
from vtp_export.models import MODELS
from vtp_export.models.tokenizer import stand_in_clip_tokenizer
from vtp_export.records.export import read_export

pytestmark = pytest.mark.slow

VISION = dict(hidden_size=72, intermediate_size=144, num_hidden_layers=5, num_attention_heads=6, image_size=224,
              patch_size=14, projection_dim=24, hidden_act="quick_gelu")
TEXT = dict(model_type="llama", hidden_size=104, intermediate_size=208, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=32064)
CLIP_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77, vocab_size=49408, projection_dim=24, hidden_act="quick_gelu")
COMMON = dict(vision_config=VISION, text_config=TEXT, image_token_id=32000, projector_hidden_act="gelu",
              vision_feature_layer=-2, vision_feature_select_strategy="default")


def save_checkpoint(folder, next_grid: bool):
    torch.manual_seed(18)
    if next_grid:
        config = LlavaNextConfig(**COMMON, image_grid_pinpoints=[[448, 448], [224, 448], [448, 224]])
        model, model_name = LlavaNextForConditionalGeneration(config), "llava-next-tiny"
    else:
        config = LlavaConfig(**COMMON)
        model, model_name = LlavaForConditionalGeneration(config), "llava15-tiny"
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "vision_tower" in name and ("q_proj" in name or "k_proj" in name):
                parameter.mul_(PEAKED_QK_SCALE)
    model.save_pretrained(folder)
    MODELS.get(model_name).stand_in_tokenizer(config).save_pretrained(folder)
    clip = CLIPModel(CLIPConfig(text_config=CLIP_TEXT, vision_config=VISION, projection_dim=24))
    clip.save_pretrained(folder / CLIP_SUBFOLDER)
    stand_in_clip_tokenizer(CLIP_TEXT["vocab_size"]).save_pretrained(folder / CLIP_SUBFOLDER)
    return folder


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("unseen")
    yield {"llava15": save_checkpoint(root / "llava", False), "llava-next": save_checkpoint(root / "next", True)}
    shutil.rmtree(root)


@pytest.mark.parametrize("model,method,keep", [("llava15", "prumerge", 192), ("llava15", "prumerge_plus", 192),
                                               ("llava15", "cdpruner", 96), ("llava-next", "cdpruner", 320)])
def test_export_verifies_and_equals_the_official_code(checkpoints, tmp_path, model, method, keep):
    folder = checkpoints[model]
    options = {"grid": "2x2"} if model == "llava-next" else {}
    out = export(ExportRequest(model=model, method=method, keep=keep, target="cpu", weights=folder,
                               model_options=options, out=tmp_path / "export"))
    verification = read_export(out).graphs["vision"].verification
    assert verification.passed and verification.selection == "identical"

    adapter = MODELS.get(model)
    config = read_model_config(adapter, WeightsFolder(folder))
    stack = load_vision_stack(adapter, config, options, WeightsFolder(folder))
    stack.clip = load_clip_text(adapter, config, WeightsFolder(folder / CLIP_SUBFOLDER))
    check_case(model, stack, method, keep, {}, llava15_official if model == "llava15" else next_official)
