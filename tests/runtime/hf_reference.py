"""HF's own generate() with the same pruning applied in PyTorch: what the runtime's answers are checked against."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer

from vtp_export.checkpoint.load import load_clip_text, load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.export.graph import VisionGraph
from vtp_export.methods import METHODS
from vtp_export.models.tokenizer import clip_input_ids
from vtp_export.onnx.names import NUM_VALID
from vtp_export.towers.clip import ClipTextEncoder


def hf_ids_with_pruning(hf, model, checkpoint: Path, method_name: str, keep: int, image: np.ndarray, question: str,
                        new_tokens: int) -> list[int]:
    """HF's generate() on inputs_embeds whose image part is the PyTorch pruning of the image's features (the
    checkpoint's CLIP model in its clip/ subfolder for text-conditioned methods), greedy."""
    config = read_model_config(model, WeightsFolder(checkpoint))
    stack = load_vision_stack(model, config, {}, WeightsFolder(checkpoint))
    method = METHODS.get(method_name).create(stack.geometry, keep, {})
    pixel_values = torch.from_numpy(model.preprocess([Image.fromarray(image)], stack.geometry))
    if method.text_conditioned:
        stack.clip = load_clip_text(model, config, WeightsFolder(checkpoint / "clip"))
    graph = VisionGraph(model, stack, method)
    with torch.no_grad():
        if method.text_conditioned:
            ids = clip_input_ids(AutoTokenizer.from_pretrained(checkpoint / "clip"), [question], 77)
            outputs = graph(pixel_values, ClipTextEncoder(stack.clip)(torch.from_numpy(ids)))
        else:
            outputs = graph(pixel_values)
        valid = int(outputs[2][0]) if NUM_VALID in method.output_names else outputs[0].shape[1]
        image_embeds = outputs[0][0, :valid]
        prompt = model.prompt(f"{model.image_token}\n{question}", config)
        ids = AutoTokenizer.from_pretrained(checkpoint)(prompt, return_tensors="pt").input_ids[0]
        slot = int((ids == config.image_token_id).nonzero()[0])
        embed = hf.get_input_embeddings()
        inputs_embeds = torch.cat([embed(ids[:slot]), image_embeds, embed(ids[slot + 1:])]).unsqueeze(0)
        generated = hf.generate(inputs_embeds=inputs_embeds, attention_mask=torch.ones(inputs_embeds.shape[:2]),
                                max_new_tokens=new_tokens, do_sample=False)
    return generated[0].tolist()


def exports_on_demand(cached_export, model: str, weights: Path, keep: int, **request) -> Callable[[str], Path]:
    """method -> its CPU export of the checkpoint at `keep` (`none` unpruned), from the session's export cache
    (tests/conftest.py): made on first use, read only."""

    def exported(method: str) -> Path:
        return cached_export(model, method, None if method == "none" else keep, "cpu", weights=weights,
                             verify_samples=1, **request)

    return exported
