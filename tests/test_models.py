import pytest

from vtp_export.errors import WeightsError
from vtp_export.models import MODELS, geometry_of, llava15_tiny_config


def test_llava15_geometry_is_read_from_config():
    g = geometry_of(MODELS.get("llava15").make_config())
    assert (g.image_size, g.grid, g.num_patches, g.vision_width, g.llm_width, g.feature_layer) == (336, 24, 576, 1024, 4096, 22)


def test_a_224_px_config_has_256_patches():
    assert geometry_of(llava15_tiny_config(224)).num_patches == 256


@pytest.mark.parametrize("change,message", [
    ({"vision_feature_layer": [-2, -1]}, "single feature layer"),
    ({"vision_feature_select_strategy": "full"}, "not supported"),
    ({"vision_feature_layer": 0}, "embeddings"),
])
def test_unsupported_configs_are_refused(change, message):
    config = llava15_tiny_config()
    for key, value in change.items():
        setattr(config, key, value)
    with pytest.raises(WeightsError, match=message):
        geometry_of(config)
