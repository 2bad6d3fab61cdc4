"""What the runtime reads of the checkpoint, written into the export folder so that the folder runs on its own
(moved, renamed, archived, copied to a device without the checkpoint): the model's config.json and tokenizer
(chat template and special tokens included), LLaVA-NeXT's image_newline, CLIP's tokenizer for
text-conditioned methods. Random-weight exports carry the default config and the stand-in tokenizers."""

from pathlib import Path
from typing import Any

import numpy as np

from vtp_export.checkpoint.locate import read_tensor
from vtp_export.contract import WeightsFolder, WeightsSource
from vtp_export.models.base import VisionLanguageModel
from vtp_export.models.tokenizer import load_tokenizer, stand_in_clip_tokenizer
from vtp_export.records.codec import sha256
from vtp_export.records.export import CLIP_TOKENIZER_FOLDER, IMAGE_NEWLINE_FILE, RUNTIME_FOLDER, RuntimeFile
from vtp_export.util.quiet import quiet


def write_runtime_files(stage: Path, model: VisionLanguageModel, config: Any, weights: WeightsSource,
                        clip_weights: WeightsSource | None, clip_vocab_size: int | None) -> list[RuntimeFile]:
    """Write them under `stage` and return each with its sha256, in a stable order."""
    folder = stage / RUNTIME_FOLDER
    folder.mkdir()
    (folder / "config.json").write_text(config.to_json_string(use_diff=False))
    checkpoint = weights.path if isinstance(weights, WeightsFolder) else None
    with quiet(("transformers",)):
        load_tokenizer(checkpoint, lambda: model.stand_in_tokenizer(config)).save_pretrained(folder)
    if checkpoint is not None and model.image_newline_keys:
        np.save(stage / IMAGE_NEWLINE_FILE, read_tensor(checkpoint, model.image_newline_keys))
    if clip_weights is not None:
        clip_folder = clip_weights.path if isinstance(clip_weights, WeightsFolder) else None
        with quiet(("transformers",)):
            load_tokenizer(clip_folder, lambda: stand_in_clip_tokenizer(clip_vocab_size)).save_pretrained(
                stage / CLIP_TOKENIZER_FOLDER)
    written = sorted(p for root in (folder, stage / CLIP_TOKENIZER_FOLDER) if root.is_dir()
                     for p in root.rglob("*") if p.is_file())
    return [RuntimeFile(p.relative_to(stage).as_posix(), sha256(p)) for p in written]
