"""Reading the vision tower and projector of a local HF-format LLaVA checkpoint (safetensors), and the
text side of its CLIP model for text-conditioned methods.

Only the tensors of the exported part are read, one at a time, so a 7B checkpoint costs the memory of
its vision side alone. Both key layouts are accepted: `vision_tower.vision_model.*` (llava-hf on the hub,
transformers 4.x) and `vision_tower.*` / `model.vision_tower.*` (transformers 5.x).
"""

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from transformers import CLIPConfig, LlavaConfig

from vtp_export.errors import WeightsError
from vtp_export.models import (
    ClipText, ModelSpec, VisionStack, build_clip_text, build_vision_stack, check_clip_matches, geometry_of,
)

TOWER_PREFIX = "vision_tower."
PROJECTOR_PREFIX = "multi_modal_projector."
CLIP_PREFIXES = ("text_model.", "text_projection.", "visual_projection.")
# A LLaVA folder may carry its CLIP model (for text-conditioned methods) in this subfolder.
CLIP_SUBFOLDER = "clip"


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


def locate_clip_weights(spec: ModelSpec, text_weights: Path | None, weights: Path | None,
                        random_weights: bool) -> Path | None:
    """The CLIP folder whose text side text-conditioned methods use; None means seeded random weights.

    In order: --text-weights, the `clip/` subfolder of the LLaVA folder, the canonical CLIP model in the
    offline HF cache. Random LLaVA weights come with random CLIP weights.
    """
    if text_weights is not None and random_weights:
        raise WeightsError("--text-weights and --random-weights exclude each other")
    if text_weights is not None:
        return text_weights
    if random_weights or (weights is None and spec.canonical_repo is None):
        return None
    if weights is not None and (weights / CLIP_SUBFOLDER).is_dir():
        return weights / CLIP_SUBFOLDER
    cached = cached_snapshot(spec.canonical_clip_repo) if spec.canonical_clip_repo else None
    if cached is None:
        wanted = spec.canonical_clip_repo or "the CLIP model of its vision tower"
        raise WeightsError(
            f"text-conditioned methods need CLIP's text tower ({wanted}), which is not in the HF cache "
            f"nor in a {CLIP_SUBFOLDER}/ subfolder of --weights: pass --text-weights DIR or --random-weights"
        )
    return cached


def read_config_json(folder: Path, model_type: str, display: str) -> dict:
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
    if not isinstance(raw, dict) or raw.get("model_type") != model_type:
        found = raw.get("model_type") if isinstance(raw, dict) else None
        raise WeightsError(f"{folder} is not a {display} checkpoint (model_type={found!r}, expected {model_type!r})")
    return raw


def read_llava_config(folder: Path) -> LlavaConfig:
    raw = read_config_json(folder, "llava", "LLaVA")
    try:
        config = LlavaConfig.from_dict(raw)
    except Exception as error:  # transformers raises many types for malformed configs
        raise WeightsError(f"{folder / 'config.json'} is not a valid LLaVA config: {error}") from None
    geometry_of(config)
    return config


def read_clip_config(folder: Path, config: LlavaConfig) -> CLIPConfig:
    raw = read_config_json(folder, "clip", "CLIP")
    try:
        clip_config = CLIPConfig.from_dict(raw)
    except Exception as error:  # transformers raises many types for malformed configs
        raise WeightsError(f"{folder / 'config.json'} is not a valid CLIP config: {error}") from None
    check_clip_matches(clip_config, config, str(folder))
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


def target_name(checkpoint_key: str) -> str | None:
    """Checkpoint key -> key in {"tower.*", "projector.*"}, or None for tensors outside the vision graph."""
    key = checkpoint_key.removeprefix("model.")
    if key.startswith(TOWER_PREFIX):
        return "tower." + key.removeprefix(TOWER_PREFIX).removeprefix("vision_model.")
    if key.startswith(PROJECTOR_PREFIX):
        return "projector." + key.removeprefix(PROJECTOR_PREFIX)
    return None


def clip_target_name(checkpoint_key: str) -> str | None:
    """CLIP checkpoint key -> key in {"text.*", "visual_projection.*"}, or None for the vision side."""
    key = checkpoint_key.removeprefix("model.")
    if key.startswith("visual_projection."):
        return key
    if key.startswith(CLIP_PREFIXES):
        return "text." + key
    return None


def copy_tensors(folder: Path, slots: dict[str, torch.Tensor], target: Callable[[str], str | None], what: str) -> None:
    """Fill every slot from the safetensors of `folder`, reading only the tensors whose target is a slot."""
    filled: set[str] = set()
    for path in weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as shard:
                for key in shard.keys():
                    name = target(key)
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
        raise WeightsError(f"{folder} lacks {what} weights: {shown}")


def load_checkpoint(folder: Path, config: LlavaConfig) -> VisionStack:
    """Vision tower and projector of `config` with the weights of `folder` (read with read_llava_config)."""
    tower, projector = build_vision_stack(config)
    slots = {f"tower.{n}": t for n, t in tower.state_dict(keep_vars=True).items()}
    slots |= {f"projector.{n}": t for n, t in projector.state_dict(keep_vars=True).items()}
    copy_tensors(folder, slots, target_name, "vision")
    return VisionStack(config, tower, projector, source=str(folder.resolve()))


def load_clip_text(folder: Path, config: LlavaConfig) -> ClipText:
    """CLIP's text tower with projection and its visual projection, from a HF-format CLIP folder."""
    clip = build_clip_text(read_clip_config(folder, config), source=str(folder.resolve()))
    slots = {f"text.{n}": t for n, t in clip.text.state_dict(keep_vars=True).items()}
    slots |= {f"visual_projection.{n}": t for n, t in clip.visual_projection.state_dict(keep_vars=True).items()}
    copy_tensors(folder, slots, clip_target_name, "CLIP text")
    return clip
