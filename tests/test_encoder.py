"""The re-stated feature layer against HF LLaVA itself (eager attention, which returns attention maps)."""

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from vtp_export.checkpoint import load_checkpoint, read_llava_config
from vtp_export.encoder import PrunedVisionEncoder
from vtp_export.methods import METHODS
from vtp_export.verify import random_pixel_values


@pytest.fixture(params=["tiny_checkpoint", "tiny_checkpoint_224"])
def checkpoint(request):
    return request.getfixturevalue(request.param)


def test_features_match_hf_hidden_states_and_attention(checkpoint):
    hf = LlavaForConditionalGeneration.from_pretrained(checkpoint, attn_implementation="eager").eval()
    stack = load_checkpoint(checkpoint, read_llava_config(checkpoint))
    encoder = PrunedVisionEncoder(stack, METHODS.get("fastervlm").create(stack.geometry, 8, {}))
    pixel_values = random_pixel_values(stack.geometry, batch=2, seed=0)
    with torch.no_grad():
        ours = encoder.features(pixel_values)
        theirs = hf.model.vision_tower(pixel_values, output_hidden_states=True, output_attentions=True)
    layer = hf.config.vision_feature_layer
    torch.testing.assert_close(ours.hidden, theirs.hidden_states[layer], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.cls_attention, theirs.attentions[layer][:, :, 0], atol=1e-6, rtol=1e-5)
    assert ours.cls_attention.dtype == torch.float32


def test_none_equals_llava_image_features(checkpoint):
    hf = LlavaForConditionalGeneration.from_pretrained(checkpoint).eval()
    stack = load_checkpoint(checkpoint, read_llava_config(checkpoint))
    encoder = PrunedVisionEncoder(stack, METHODS.get("none").create(stack.geometry, None, {}))
    pixel_values = random_pixel_values(stack.geometry, batch=2, seed=1)
    with torch.no_grad():
        embeds, index = encoder(pixel_values)
        reference = hf.get_image_features(pixel_values).pooler_output
    torch.testing.assert_close(embeds, torch.stack(list(reference)), atol=1e-5, rtol=1e-5)
    assert (index == torch.arange(1, stack.geometry.num_patches + 1)).all()


def test_layers_after_the_feature_layer_are_not_in_the_encoder(tiny_checkpoint):
    stack = load_checkpoint(tiny_checkpoint, read_llava_config(tiny_checkpoint))
    encoder = PrunedVisionEncoder(stack, METHODS.get("none").create(stack.geometry, None, {}))
    assert len(encoder.layers) + 1 == stack.geometry.feature_layer + 1
    assert stack.geometry.feature_layer == stack.config.vision_config.num_hidden_layers - 2
