"""Selection must not depend on the CPU. float32 results differ between AVX2 and AVX-512 kernels and between
PyTorch and onnxruntime by rounding; a kept set is CPU-independent when the float32 computation keeps the
same tokens as the float64 one, the true answer that every float32 implementation approximates.

The features come from the tiny model itself (random weights, random images), whose projected tokens have
the ill-conditioned spectrum of a real projector: 64 dims, a few dominant directions, a long tail. At keep
64 CDPruner's kernel is exhausted (rank 64). VisPruner is chaotic by design (see its module) and is
verified by set overlap instead.
"""

import copy
import dataclasses
from functools import cache

import pytest
import torch

from tests.methods.features import run_method
from vtp_export.checkpoint.load import load_clip_text, load_vision_stack
from vtp_export.contract import RandomWeights, VisionFeatures
from vtp_export.errors import UsageError
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.onnx.inputs import random_input_ids, random_pixel_values
from vtp_export.towers.clip import ClsAttentionRow, FullWidthClsRow, full_width_cls_attention, run_feature_layer

TINY = MODELS.get("llava15-tiny")
EXACT = [name for name, method in METHODS.items() if method.exact_selection and name != "none" and not method.temporal]


@cache
def tiny_model():
    config = TINY.default_config()
    stack = load_vision_stack(TINY, config, {}, RandomWeights(0))
    stack.clip = load_clip_text(TINY, config, RandomWeights(0))
    return stack


@cache
def model_features(seed: int) -> VisionFeatures:
    """Every signal any method reads, from the tiny model on two random images and questions."""
    stack = tiny_model()
    tower, layer = stack.tower, stack.geometry.feature_layer
    ids = torch.from_numpy(random_input_ids(2, stack.clip.max_length, stack.clip.vocab_size, seed))
    with torch.no_grad():
        pixel_values = torch.from_numpy(random_pixel_values(stack.geometry, 2, seed))
        x = tower.pre_layrnorm(tower.embeddings(pixel_values))
        for encoder_layer in tower.encoder.layers[:layer]:
            x = encoder_layer(x, None)
        features = run_feature_layer(tower.encoder.layers[layer], x, ClsAttentionRow())
        next_layer = tower.encoder.layers[layer + 1]
        features.next_cls_attention, features.next_keys = full_width_cls_attention(next_layer, features.hidden,
                                                                                   FullWidthClsRow())
        patches = tower.post_layernorm(features.patches)
        features.clip_patch_embeds = stack.clip.visual_projection(patches)
        features.text_embeds = stack.clip.text(ids).text_embeds
    return features


def in_float64(features):
    return dataclasses.replace(features, **{f.name: getattr(features, f.name).double()
                                            for f in dataclasses.fields(features)
                                            if isinstance(getattr(features, f.name), torch.Tensor)})


def accepts(name: str, keep: int) -> bool:
    try:
        METHODS.get(name).output_tokens(TINY.geometry(TINY.default_config(), {}), keep)
        return True
    except UsageError:  # a method's own limit on keep (CDPruner: at most the LLM width)
        return False


@pytest.mark.parametrize("name,keep", [(name, keep) for name in EXACT for keep in (16, 48, 63, 64, 192)
                                       if accepts(name, keep)])
@pytest.mark.parametrize("seed", range(3))
def test_float32_keeps_the_float64_tokens(name, keep, seed):
    stack = tiny_model()
    method = METHODS.get(name).create(stack.geometry, keep, {})
    features = model_features(seed)
    with torch.no_grad():
        _, index, *_ = run_method(method, features, stack.projector)
        _, true_index, *_ = run_method(copy.deepcopy(method).double(), in_float64(features),
                                        copy.deepcopy(stack.projector).double())
    assert torch.equal(index, true_index)
