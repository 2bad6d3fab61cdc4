"""Where weights come from: --weights, --random-weights, the offline HF cache, CLIP's text side."""

import json
import shutil

import huggingface_hub.constants
import pytest

from vtp_export.checkpoint.locate import (
    CLIP_SUBFOLDER, locate_clip_weights, locate_weights, read_config_json, read_model_config,
)
from vtp_export.contract import RandomWeights, WeightsFolder, weights_from_record
from vtp_export.errors import WeightsError
from vtp_export.models import MODELS

LLAVA15 = MODELS.get("llava15")


def test_uncached_canonical_checkpoint_names_both_flags(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match="--weights DIR.*--random-weights"):
        locate_weights(LLAVA15, None, random_weights=False, seed=0)


def test_canonical_checkpoint_is_found_in_the_offline_cache(tiny_checkpoint, monkeypatch, tmp_path):
    repo = tmp_path / "models--llava-hf--llava-1.5-7b-hf"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    found = locate_weights(LLAVA15, None, random_weights=False, seed=0)
    assert found == WeightsFolder(repo / "snapshots" / "0123abc")
    assert read_model_config(LLAVA15, found).text_config.hidden_size == 64


def test_tiny_model_is_random_without_flags():
    assert locate_weights(MODELS.get("llava15-tiny"), None, random_weights=False, seed=3) == RandomWeights(3)


def test_weights_and_random_weights_exclude_each_other(tmp_path):
    with pytest.raises(WeightsError, match="exclude each other"):
        locate_weights(LLAVA15, tmp_path, random_weights=True, seed=0)


def test_clip_lookup_order(tiny_checkpoint, tiny_clip, tmp_path, monkeypatch):
    assert locate_clip_weights(LLAVA15, tiny_clip, WeightsFolder(tiny_checkpoint)) == WeightsFolder(tiny_clip)
    assert locate_clip_weights(LLAVA15, None, RandomWeights(5)) == RandomWeights(5)
    bundle = tmp_path / "llava"
    (bundle / CLIP_SUBFOLDER).mkdir(parents=True)
    assert locate_clip_weights(LLAVA15, None, WeightsFolder(bundle)) == WeightsFolder(bundle / CLIP_SUBFOLDER)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match="--text-weights DIR or --random-weights"):
        locate_clip_weights(LLAVA15, None, WeightsFolder(tiny_checkpoint))


@pytest.mark.parametrize("source", [RandomWeights(7), WeightsFolder(__import__("pathlib").Path("/some/folder"))])
def test_sources_round_trip_through_their_record(source):
    assert weights_from_record(json.loads(json.dumps(source.as_record()))) == source


def test_config_folder_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        read_config_json(tmp_path / "nope", "llava", "llava15")
    (tmp_path / "file").write_text("x")
    with pytest.raises(WeightsError, match="is a file, not a checkpoint folder"):
        read_config_json(tmp_path / "file", "llava", "llava15")
