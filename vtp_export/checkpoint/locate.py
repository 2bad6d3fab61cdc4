"""Where a model's weights come from: seeded random initialisation or a local HF-format folder.

One typed source, recorded in config.json as {"kind": "random", "seed": N} or {"kind": "folder", "path": P},
so that nothing parses a "random(seed=...)" string.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vtp_export.contract import RandomWeights, WeightsFolder, WeightsSource
from vtp_export.errors import WeightsError
from vtp_export.models.base import VisionLanguageModel
from vtp_export.models.clip import check_clip_matches

if TYPE_CHECKING:
    import numpy as np

# A checkpoint folder may carry its CLIP model (for text-conditioned methods) in this subfolder.
CLIP_SUBFOLDER = "clip"


def cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # any miss of the offline cache lookup means: not cached
        return None


def locate_weights(model: VisionLanguageModel, weights: Path | None, random_weights: bool, seed: int) -> WeightsSource:
    """--weights, else seeded random weights (asked for, or a toy model), else the canonical checkpoint in the
    offline HF cache."""
    if weights is not None and random_weights:
        raise WeightsError("--weights and --random-weights exclude each other")
    if weights is not None:
        return WeightsFolder(weights)
    if random_weights or model.random_only:
        return RandomWeights(seed)
    cached = cached_snapshot(model.canonical_repo) if model.canonical_repo else None
    if cached is None:
        raise WeightsError(
            f"no local weights for {model.name} ({model.canonical_repo} is not in the HF cache): "
            "pass --weights DIR (a HF-format checkpoint folder) or --random-weights"
        )
    return WeightsFolder(cached)


def locate_clip_weights(model: VisionLanguageModel, text_weights: Path | None, weights: WeightsSource) -> WeightsSource:
    """The CLIP folder whose text side text-conditioned methods use: --text-weights, the `clip/` subfolder of
    the checkpoint folder, the canonical CLIP model in the offline HF cache; random LLaVA weights come with
    random CLIP weights."""
    if text_weights is not None:
        if isinstance(weights, RandomWeights) and not model.random_only:
            raise WeightsError("--text-weights and --random-weights exclude each other")
        return WeightsFolder(text_weights)
    if isinstance(weights, RandomWeights):
        return weights
    if (weights.path / CLIP_SUBFOLDER).is_dir():
        return WeightsFolder(weights.path / CLIP_SUBFOLDER)
    repo = model.canonical_clip_repo
    cached = cached_snapshot(repo) if repo else None
    if cached is None:
        wanted = repo or "the CLIP model of its vision tower"
        raise WeightsError(
            f"text-conditioned methods need CLIP's text tower ({wanted}), which is not in the HF cache "
            f"nor in a {CLIP_SUBFOLDER}/ subfolder of --weights: pass --text-weights DIR or --random-weights"
        )
    return WeightsFolder(cached)


def read_config_json(folder: Path, model_type: str, display: str) -> dict:
    """config.json of a HF checkpoint folder, checked to be of `model_type`; WeightsError in one line."""
    if not folder.exists():
        raise WeightsError(f"weights folder {folder} does not exist")
    if not folder.is_dir():
        raise WeightsError(f"weights path {folder} is a file, not a checkpoint folder")
    try:
        if not any(folder.iterdir()):
            raise WeightsError(f"weights folder {folder} is empty")
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise WeightsError(f"{folder} has no config.json: not a HF-format checkpoint")
        raw = json.loads(config_path.read_text())
    except PermissionError as error:
        raise WeightsError(f"cannot read {error.filename or folder}: permission denied") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{folder / 'config.json'} is corrupt: {error}") from None
    if not isinstance(raw, dict) or raw.get("model_type") != model_type:
        found = raw.get("model_type") if isinstance(raw, dict) else None
        raise WeightsError(f"{folder} is not a {display} checkpoint (model_type={found!r}, expected {model_type!r})")
    return raw


def read_model_config(model: VisionLanguageModel, source: WeightsSource) -> Any:
    """The HF config of the checkpoint (the model's canonical one for random weights)."""
    if isinstance(source, RandomWeights):
        return model.default_config()
    raw = read_config_json(source.path, model.model_type, model.name)
    try:
        return model.config_from_dict(raw)
    except Exception as error:  # transformers raises many types for malformed configs
        raise WeightsError(f"{source.path / 'config.json'} is not a valid {model.name} config: {error}") from None


def read_clip_config(model: VisionLanguageModel, source: WeightsSource, config: Any) -> Any:
    if isinstance(source, RandomWeights):
        return model.default_clip_config()
    from transformers import CLIPConfig

    raw = read_config_json(source.path, "clip", "CLIP")
    try:
        clip_config = CLIPConfig.from_dict(raw)
    except Exception as error:  # transformers raises many types for malformed configs
        raise WeightsError(f"{source.path / 'config.json'} is not a valid CLIP config: {error}") from None
    check_clip_matches(clip_config, config, str(source.path))
    return clip_config


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as error:
            raise WeightsError(f"{index} is corrupt: {error}") from None
        files = [folder / name for name in names]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"{folder} is missing shard(s) named in its index: {', '.join(missing)}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsError(f"{folder} has no *.safetensors weights (convert .bin checkpoints with save_pretrained)")
    return files


def read_tensor(folder: Path, names: tuple[str, ...]) -> np.ndarray:
    """The first of `names` found in the folder's safetensors, as numpy (no torch needed)."""
    import numpy as np
    from safetensors import SafetensorError, safe_open

    for path in weight_files(folder):
        try:
            with safe_open(str(path), framework="np") as shard:
                for name in names:
                    if name in shard.keys():
                        return np.asarray(shard.get_tensor(name), dtype=np.float32)
        except (SafetensorError, OSError) as error:
            raise WeightsError(f"corrupt weights file {path}: {error}") from None
    raise WeightsError(f"{folder} has no {names[0]} tensor")
