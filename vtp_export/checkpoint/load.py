"""Reading the vision side of a local HF-format checkpoint (safetensors) into the modules its adapter
builds, and the text side of its CLIP model for text-conditioned methods.

Only the tensors of the exported part are read, one at a time, so a 7B checkpoint costs the memory of its
vision side alone. Which keys belong where is the adapter's (models/*.py `vision_key`).
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from vtp_export.checkpoint.locate import read_clip_config, weight_files
from vtp_export.contract import ClipText, RandomWeights, VisionStack, WeightsFolder, WeightsSource
from vtp_export.errors import WeightsError
from vtp_export.models.base import VisionLanguageModel
from vtp_export.models.clip import clip_text_key
from vtp_export.towers.clip import build_clip_text


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


def load_vision_stack(model: VisionLanguageModel, config: Any, options: dict[str, str],
                      source: WeightsSource) -> VisionStack:
    """Tower and projector of `config`: seeded random, or with the weights of the checkpoint folder."""
    geometry = model.geometry(config, options)
    if isinstance(source, RandomWeights):
        torch.manual_seed(source.seed)
    tower, projector = model.build_vision(config)
    if isinstance(source, WeightsFolder):
        slots = {f"tower.{n}": t for n, t in tower.state_dict(keep_vars=True).items()}
        slots |= {f"projector.{n}": t for n, t in projector.state_dict(keep_vars=True).items()}
        copy_tensors(source.path, slots, model.vision_key, "vision")
        source = WeightsFolder(source.path.resolve())
    return VisionStack(config, geometry, tower, projector, source)


def load_clip_text(model: VisionLanguageModel, config: Any, source: WeightsSource) -> ClipText:
    """CLIP's text tower with projection and its visual projection: seeded random (seed + 1, as the vision
    side has seed), or from a HF-format CLIP folder."""
    clip_config = read_clip_config(model, source, config)
    if isinstance(source, RandomWeights):
        torch.manual_seed(source.seed + 1)
        return build_clip_text(clip_config, source)
    clip = build_clip_text(clip_config, WeightsFolder(source.path.resolve()))
    slots = {f"text.{n}": t for n, t in clip.text.state_dict(keep_vars=True).items()}
    slots |= {f"visual_projection.{n}": t for n, t in clip.visual_projection.state_dict(keep_vars=True).items()}
    copy_tensors(source.path, slots, clip_text_key, "CLIP text")
    return clip


def load_stack(model: VisionLanguageModel, config: Any, options: dict[str, str], weights: WeightsSource,
               clip_weights: WeightsSource | None) -> VisionStack:
    """The vision stack of `weights`, with CLIP's text side where `clip_weights` is given."""
    stack = load_vision_stack(model, config, options, weights)
    if clip_weights is not None:
        stack.clip = load_clip_text(model, config, clip_weights)
    return stack
