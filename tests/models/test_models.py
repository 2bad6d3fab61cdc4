"""The model registry: each adapter reads its geometry from the checkpoint's config and refuses what it
cannot export."""

import pytest

from vtp_export.errors import UsageError, WeightsError
from vtp_export.methods import METHODS
from vtp_export.models import MODELS

LLAVA15, TINY = MODELS.get("llava15"), MODELS.get("llava15-tiny")


def test_llava15_geometry_is_read_from_config():
    g = LLAVA15.geometry(LLAVA15.default_config(), {})
    assert (g.image_height, g.grid, g.num_patches, g.vision_width, g.llm_width, g.feature_layer) == \
        (336, 24, 576, 1024, 4096, 22)
    assert g.cls_token and g.crops == 1 and g.tokens_per_image == 576


def test_a_224_px_config_has_256_patches():
    assert TINY.geometry(TINY.default_config(224), {}).num_patches == 256


@pytest.mark.parametrize("change,message", [
    ({"vision_feature_layer": [-2, -1]}, "single feature layer"),
    ({"vision_feature_select_strategy": "full"}, "not supported"),
    ({"vision_feature_layer": 0}, "embeddings"),
])
def test_unsupported_configs_are_refused(change, message):
    config = TINY.default_config()
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(WeightsError, match=message):
        TINY.geometry(config, {})


def test_model_options_are_checked():
    with pytest.raises(UsageError, match="--grid is not an option of llava15"):
        LLAVA15.resolved_options({"grid": "2x2"})


def test_every_registered_method_is_supported_or_refused_in_one_line():
    refused = set()
    for model in MODELS.names():
        adapter = MODELS.get(model)
        for name, method in METHODS.items():
            try:
                adapter.check_method(method.for_signals(adapter.signals))
            except UsageError as error:
                assert str(error).startswith(f"method {name} needs ") and "\n" not in str(error)
                refused.add((model, name))
    # the refusal branch ran (Qwen2.5-VL has no CLS token), and the unpruned baseline runs on every model
    assert ("qwen2.5-vl", "fastervlm") in refused and ("qwen2.5-vl-tiny", "trim") in refused
    assert not {name for _, name in refused} & {"none", "uniform", "random", "divprune", "dart"}
