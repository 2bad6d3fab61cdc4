"""Reading the vision tower and projector of a local HF-format LLaVA checkpoint (safetensors).

Only the tensors of the exported part are read, one at a time, so a 7B checkpoint costs the memory of
its vision side alone. Both key layouts are accepted: `vision_tower.vision_model.*` (llava-hf on the hub,
transformers 4.x) and `vision_tower.*` / `model.vision_tower.*` (transformers 5.x).
"""

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import LlavaConfig

from vtp_export.errors import WeightsError
from vtp_export.models import ModelSpec, VisionStack, build_vision_stack, geometry_of

TOWER_PREFIX = "vision_tower."
PROJECTOR_PREFIX = "multi_modal_projector."


def locate_weights(spec: ModelSpec, weights: Path | None, random_weights: bool) -> Path | None:
    """The checkpoint folder to read: --weights, else the canonical one in the offline HF cache.

    None means seeded random weights: asked for with --random-weights, or the model has no real checkpoint.
    """
    if weights is not None and random_weights:
        raise WeightsError("--weights and --random-weights exclude each other")
    if random_weights or (weights is None and spec.canonical_repo is None):
        return None
    if weights is not None:
        return weights
    cached = cached_snapshot(spec.canonical_repo)
    if cached is None:
        raise WeightsError(
            f"no local weights for {spec.name} ({spec.canonical_repo} is not in the HF cache): "
            "pass --weights DIR (a HF-format LLaVA folder) or --random-weights"
        )
    return cached


def cached_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # any miss of the offline cache lookup means: not cached
        return None


def read_llava_config(folder: Path) -> LlavaConfig:
    if not folder.is_dir():
        raise WeightsError(f"weights folder {folder} does not exist")
    if not any(folder.iterdir()):
        raise WeightsError(f"weights folder {folder} is empty")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{folder} has no config.json: not a HF-format checkpoint")
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{config_path} is corrupt: {error}") from None
    if not isinstance(raw, dict) or raw.get("model_type") != "llava":
        found = raw.get("model_type") if isinstance(raw, dict) else None
        raise WeightsError(f"{folder} is not a LLaVA checkpoint (model_type={found!r}, expected 'llava')")
    try:
        config = LlavaConfig.from_dict(raw)
    except Exception as error:  # transformers raises many types for malformed configs
        raise WeightsError(f"{config_path} is not a valid LLaVA config: {error}") from None
    geometry_of(config)
    return config


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


def target_name(checkpoint_key: str) -> str | None:
    """Checkpoint key -> key in {"tower.*", "projector.*"}, or None for tensors outside the vision graph."""
    key = checkpoint_key.removeprefix("model.")
    if key.startswith(TOWER_PREFIX):
        return "tower." + key.removeprefix(TOWER_PREFIX).removeprefix("vision_model.")
    if key.startswith(PROJECTOR_PREFIX):
        return "projector." + key.removeprefix(PROJECTOR_PREFIX)
    return None


def load_checkpoint(folder: Path, config: LlavaConfig) -> VisionStack:
    """Vision tower and projector of `config` with the weights of `folder` (read with read_llava_config)."""
    tower, projector = build_vision_stack(config)
    slots = {f"tower.{n}": t for n, t in tower.state_dict(keep_vars=True).items()}
    slots |= {f"projector.{n}": t for n, t in projector.state_dict(keep_vars=True).items()}
    filled: set[str] = set()
    for path in weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as shard:
                for key in shard.keys():
                    name = target_name(key)
                    if name is None or name not in slots:
                        continue
                    tensor = shard.get_tensor(key)
                    if tensor.shape != slots[name].shape:
                        raise WeightsError(
                            f"{path.name}: {key} has shape {tuple(tensor.shape)}, "
                            f"the config implies {tuple(slots[name].shape)}"
                        )
                    with torch.no_grad():
                        slots[name].copy_(tensor)
                    filled.add(name)
        except (SafetensorError, OSError, RuntimeError) as error:
            raise WeightsError(f"corrupt weights file {path}: {error}") from None
    missing = sorted(set(slots) - filled)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise WeightsError(f"{folder} lacks vision weights: {shown}")
    return VisionStack(config, tower, projector, source=str(folder.resolve()))
