"""The re-stated feature layer against HF LLaVA itself (eager attention, which returns attention maps)."""

import pytest
import torch
from transformers import CLIPModel, LlavaForConditionalGeneration

from vtp_export.checkpoint.load import load_clip_text, load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.export.graph import VisionGraph
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.onnx.inputs import random_input_ids, random_pixel_values
from vtp_export.towers.clip import ClipTextEncoder, FullWidthClsRow, full_width_cls_attention

LLAVA15 = MODELS.get("llava15")


def load_checkpoint(folder):
    source = WeightsFolder(folder)
    return load_vision_stack(LLAVA15, read_model_config(LLAVA15, source), {}, source)


def pixels(geometry, batch, seed):
    return torch.from_numpy(random_pixel_values(geometry, batch, seed))


def graph(stack, method):
    return VisionGraph(LLAVA15, stack, method)


@pytest.fixture(params=["tiny_checkpoint", "tiny_checkpoint_224"])
def checkpoint(request):
    return request.getfixturevalue(request.param)


def test_features_match_hf_hidden_states_and_attention(checkpoint):
    hf = LlavaForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager").eval()
    stack = load_checkpoint(checkpoint)
    encoder = graph(stack, METHODS.get("fastervlm").create(stack.geometry, 8, {}))
    pixel_values = pixels(stack.geometry, batch=2, seed=0)
    with torch.no_grad():
        ours = encoder.features(pixel_values)
        theirs = hf.model.vision_tower(pixel_values, output_hidden_states=True, output_attentions=True)
    layer = hf.config.vision_feature_layer
    torch.testing.assert_close(ours.hidden, theirs.hidden_states[layer], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.cls_attention, theirs.attentions[layer][:, :, 0], atol=1e-6, rtol=1e-5)
    assert ours.cls_attention.dtype == torch.float32


def test_none_equals_llava_image_features(checkpoint):
    hf = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    stack = load_checkpoint(checkpoint)
    encoder = graph(stack, METHODS.get("none").create(stack.geometry, None, {}))
    pixel_values = pixels(stack.geometry, batch=2, seed=1)
    with torch.no_grad():
        embeds, index = encoder(pixel_values)
        reference = hf.get_image_features(pixel_values).pooler_output
    torch.testing.assert_close(embeds, torch.stack(list(reference)), atol=1e-5, rtol=1e-5)
    assert (index == torch.arange(1, stack.geometry.num_patches + 1)).all()


def test_layers_after_the_feature_layer_are_not_in_the_graph(tiny_checkpoint):
    stack = load_checkpoint(tiny_checkpoint)
    encoder = graph(stack, METHODS.get("none").create(stack.geometry, None, {}))
    assert len(encoder.features.layers) + 1 == stack.geometry.feature_layer + 1
    assert not hasattr(encoder.features, "next_layer")
    assert stack.geometry.feature_layer == stack.config.vision_config.num_hidden_layers - 2


def test_next_layer_attention_is_prumerges_hooked_q_k(tiny_checkpoint):
    """PruMerge hooks the last layer's q_proj/k_proj and takes one full-width softmax head."""
    hf = LlavaForConditionalGeneration.from_pretrained(tiny_checkpoint).eval()
    captured = {}
    last = hf.model.vision_tower.encoder.layers[-1]
    hooks = [getattr(last.self_attn, name).register_forward_hook(
        lambda module, args, output, name=name: captured.__setitem__(name, output)) for name in ("q_proj", "k_proj")]
    pixel_values = pixels(load_checkpoint(tiny_checkpoint).geometry, 2, 3)
    with torch.no_grad():
        hidden = hf.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-2]
        attention, keys = full_width_cls_attention(last, hidden, FullWidthClsRow())
    for hook in hooks:
        hook.remove()
    q, k = captured["q_proj"], captured["k_proj"]
    expected = torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)[:, 0]
    torch.testing.assert_close(attention, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(keys, k)


@pytest.mark.parametrize("legacy_eos", [False, True], ids=["eos-49407", "eos-2-argmax"])
def test_text_encoder_matches_hf_clip_text_embeds(tiny_checkpoint, tiny_clip, legacy_eos):
    config = read_model_config(LLAVA15, WeightsFolder(tiny_checkpoint))
    clip = load_clip_text(LLAVA15, config, WeightsFolder(tiny_clip))
    if legacy_eos:
        clip.config.text_config.eos_token_id = 2
        clip.text.text_model.eos_token_id = 2
    hf = CLIPModel.from_pretrained(tiny_clip).eval()
    hf.text_model.eos_token_id = clip.text.text_model.eos_token_id
    ids = torch.from_numpy(random_input_ids(3, clip.max_length, clip.config.text_config.vocab_size, seed=4))
    with torch.no_grad():
        ours = ClipTextEncoder(clip)(ids)
        theirs = hf.get_text_features(input_ids=ids)
        theirs = getattr(theirs, "pooler_output", theirs)
        unpadded = ClipTextEncoder(clip)(ids[:1, :int((ids[0] == ids[0].max()).nonzero()[0]) + 1])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours[:1], unpadded, atol=1e-5, rtol=1e-5, msg="padding after EOS must not matter")


def test_clip_patch_embeds_are_clips_visual_projection(tiny_checkpoint, tiny_clip):
    stack = load_checkpoint(tiny_checkpoint)
    stack.clip = load_clip_text(LLAVA15, stack.config, WeightsFolder(tiny_clip))
    encoder = graph(stack, METHODS.get("trim").create(stack.geometry, 8, {}))
    hf = CLIPModel.from_pretrained(tiny_clip).eval()
    pixel_values = pixels(stack.geometry, 1, 5)
    with torch.no_grad():
        ours = encoder.features(pixel_values, torch.zeros(1, 16)).clip_patch_embeds
        hidden = stack.tower(pixel_values, output_hidden_states=True).hidden_states[-2][:, 1:]
        theirs = hf.visual_projection(stack.tower.post_layernorm(hidden))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
