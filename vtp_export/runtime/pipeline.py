"""Pipeline: an export folder's vision graph stitched to the LLM, answering questions about images.

    from vtp_export.runtime import Pipeline
    pipe = Pipeline.from_dir("exports/llava15-holov-k64-orin")          # LLM: the checkpoint it was exported from
    answer = pipe.answer("What is in the picture?", ["photo.jpg"], on_text=lambda b, piece: print(piece, end=""))

Every failure a caller can cause is a PipelineError (one line; the host process is never exited).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import LlavaConfig

from vtp_export.checkpoint import read_llava_config
from vtp_export.errors import PipelineError, VtpError
from vtp_export.graph_io import IMAGE_EMBEDS, INPUT_IDS, NUM_VALID, PIXEL_VALUES, TEXT_EMBEDS, TOKEN_INDEX
from vtp_export.models import MODELS
from vtp_export.output_folder import read_export
from vtp_export.runtime.backends import open_backend, recorded_folder
from vtp_export.runtime.images import ImageInput, pixel_values
from vtp_export.runtime.llm import LanguageModel
from vtp_export.runtime.tokenizer import (
    IMAGE_TOKEN, clip_input_ids, load_tokenizer, stand_in_clip_tokenizer, stand_in_llava_tokenizer,
)

PROMPT_TEMPLATE = "USER: {content} ASSISTANT:"  # LLaVA-1.5's conversation template (llava-hf)
# sequential: positions 0..T-1 over the pruned sequence (what LLaVA does); original: image tokens keep the
# position of their source patch and the text after the image continues as if all N patches were there
# (FastV / TensorRT Edge-LLM style).
POSITION_POLICIES = ("sequential", "original")

OnText = Callable[[int, str], None]  # (request index, new text), as tokens are generated


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    image_tokens: list[int]  # visual tokens given to the LLM for each image
    time_to_first_token_s: float
    decode_tokens_per_s: float | None
    backend: str
    position_ids: str


@dataclass
class Sequence:
    embeds: torch.Tensor  # (T, D)
    positions: torch.Tensor  # (T,)
    image_tokens: list[int]


class Pipeline:
    def __init__(self, folder: Path, record: dict, backend, llm: LanguageModel, tokenizer, clip_tokenizer,
                 position_ids: str) -> None:
        self.folder, self.record, self.backend, self.llm = folder, record, backend, llm
        self.tokenizer, self.clip_tokenizer, self.position_ids = tokenizer, clip_tokenizer, position_ids
        self.geometry = record["model"]["geometry"]
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @classmethod
    def from_dir(cls, folder: str | Path, llm: str | Path | LanguageModel | None = None, backend: str | None = None,
                 position_ids: str = "sequential", device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> "Pipeline":
        """llm: None for the checkpoint the export came from (seeded random weights for random exports), a
        HF LLaVA folder, or a LanguageModel. backend: None (a matching TensorRT engine, else onnxruntime),
        "onnxruntime", "tensorrt" or "torch"."""
        folder = Path(folder)
        if position_ids not in POSITION_POLICIES:
            raise PipelineError(f"position_ids={position_ids!r} is not one of {', '.join(POSITION_POLICIES)}")
        try:
            record = read_export(folder)
            config = llava_config_of(record)
        except VtpError as error:
            raise PipelineError(str(error)) from None
        model = record["model"]
        weights = None if model["random_weights"] else Path(model["weights"])
        if record["method"]["text_conditioned"] and "text" not in record["graphs"]:
            raise PipelineError(f"{folder}: {record['method']['name']} is text-conditioned but the export has no "
                                "text graph")
        vision = open_backend(folder, record, backend)
        if isinstance(llm, LanguageModel):
            language_model = llm
        elif llm is not None or weights is not None:
            language_model = LanguageModel.from_checkpoint(Path(llm or weights), device, dtype)
        else:
            language_model = LanguageModel.random(config, model["seed"], device)
        llm_folder = None if language_model.source.startswith("random(") else Path(language_model.source)
        text = config.text_config
        tokenizer = load_tokenizer(llm_folder, lambda: stand_in_llava_tokenizer(text.vocab_size, config.image_token_id))
        clip_tokenizer = None
        if record["method"]["text_conditioned"]:
            clip_folder = recorded_folder(model["text_weights"])
            clip_tokenizer = load_tokenizer(clip_folder, lambda: stand_in_clip_tokenizer(model["text_vocab_size"]))
        return cls(folder, record, vision, language_model, tokenizer, clip_tokenizer, position_ids)

    def answer(self, prompt: str, images: list[ImageInput], max_new_tokens: int = 64, temperature: float = 0.0,
               seed: int = 0, on_text: OnText | None = None) -> Answer:
        return self.answer_batch([(prompt, images)], max_new_tokens, temperature, seed, on_text)[0]

    def answer_batch(self, requests: list[tuple[str, list[ImageInput]]], max_new_tokens: int = 64,
                     temperature: float = 0.0, seed: int = 0, on_text: OnText | None = None) -> list[Answer]:
        """Several prompts, each with its images (one per `<image>` in the prompt; prepended if it has none)."""
        if max_new_tokens < 1:
            raise PipelineError(f"max_new_tokens={max_new_tokens} must be at least 1")
        if temperature < 0:
            raise PipelineError(f"temperature={temperature} must not be negative")
        contents = [self.content(prompt, images) for prompt, images in requests]
        questions = [prompt.replace(IMAGE_TOKEN, "").strip() for prompt, _ in requests]
        flat = [image for _, images in requests for image in images]
        owners = [i for i, (_, images) in enumerate(requests) for _ in images]
        vision = self.encode_images(flat, [questions[i] for i in owners])
        sequences, start = [], 0
        for content, (_, images) in zip(contents, requests):
            sequences.append(self.sequence(content, vision, range(start, start + len(images))))
            start += len(images)
        longest = max(len(s.embeds) for s in sequences)
        if longest + max_new_tokens > self.llm.context_length:
            raise PipelineError(f"prompt of {longest} tokens (images included) + {max_new_tokens} new tokens exceeds "
                                f"the LLM's context of {self.llm.context_length}")
        embeds, mask, positions = left_padded(sequences)
        streamed: dict[int, list[int]] = {}
        shown: dict[int, str] = {}

        def on_token(b: int, token: int) -> None:
            streamed.setdefault(b, []).append(token)
            text = self.tokenizer.decode(streamed[b], skip_special_tokens=True)
            if on_text is not None and len(text) > len(shown.get(b, "")) and not text.endswith("\ufffd"):
                on_text(b, text[len(shown.get(b, "")):])
                shown[b] = text

        generated = self.llm.generate(embeds, mask, positions, max_new_tokens, self.tokenizer.eos_token_id,
                                      temperature, seed, on_token)
        return [Answer(self.tokenizer.decode(ids, skip_special_tokens=True), ids, generated.prompt_tokens,
                       s.image_tokens, generated.time_to_first_token_s, generated.decode_tokens_per_s,
                       self.backend.name, self.position_ids)
                for ids, s in zip(generated.token_ids, sequences)]

    def content(self, prompt: str, images: list[ImageInput]) -> str:
        placeholders = prompt.count(IMAGE_TOKEN)
        if placeholders == 0:
            return IMAGE_TOKEN * len(images) + "\n" + prompt if images else prompt
        if placeholders != len(images):
            raise PipelineError(f"the prompt has {placeholders} {IMAGE_TOKEN} placeholders for {len(images)} images")
        return prompt

    def encode_images(self, images: list[ImageInput], questions: list[str]) -> dict[str, np.ndarray]:
        """Run the vision graph over all images in chunks of its batch size; outputs stacked per image."""
        if not images:
            return {}
        pixels = pixel_values(images, self.geometry["image_size"])
        graph_batch = self.record["graphs"]["vision"]["inputs"][0]["shape"][0]
        chunk = graph_batch if isinstance(graph_batch, int) else len(images)
        text_embeds = self.text_embeds(questions) if self.clip_tokenizer is not None else None
        outputs: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(images), chunk):
            take = np.arange(start, start + chunk).clip(max=len(images) - 1)  # a short last chunk repeats its end
            feeds = {PIXEL_VALUES: pixels[take]}
            if text_embeds is not None:
                feeds[TEXT_EMBEDS] = text_embeds[take]
            result = self.backend.run("vision", feeds)
            kept = min(chunk, len(images) - start)
            for name, value in result.items():
                outputs.setdefault(name, []).append(value[:kept])
        return {name: np.concatenate(parts) for name, parts in outputs.items()}

    def text_embeds(self, questions: list[str]) -> np.ndarray:
        graph = self.record["graphs"]["text"]
        ids = clip_input_ids(self.clip_tokenizer, questions, graph["inputs"][0]["shape"][1])
        batch = graph["inputs"][0]["shape"][0]
        if not isinstance(batch, int):
            return self.backend.run("text", {INPUT_IDS: ids})[TEXT_EMBEDS]
        rows = [self.backend.run("text", {INPUT_IDS: np.repeat(ids[i:i + 1], batch, axis=0)})[TEXT_EMBEDS][:1]
                for i in range(len(ids))]
        return np.concatenate(rows)

    def sequence(self, content: str, vision: dict[str, np.ndarray], image_rows: range) -> Sequence:
        ids = self.tokenizer(PROMPT_TEMPLATE.format(content=content), return_tensors="pt").input_ids[0]
        slots = (ids == self.image_token_id).nonzero().flatten().tolist()
        pieces, positions, counts = [], [], []
        cursor, position = 0, 0
        for slot, row in zip(slots, image_rows):
            text = ids[cursor:slot]
            pieces.append(self.llm.embed(text))
            positions.append(torch.arange(position, position + len(text)))
            position += len(text)
            valid = int(vision[NUM_VALID][row]) if NUM_VALID in vision else vision[IMAGE_EMBEDS].shape[1]
            image = torch.from_numpy(vision[IMAGE_EMBEDS][row, :valid]).to(self.llm.device, self.llm.dtype)
            pieces.append(image)
            counts.append(valid)
            if self.position_ids == "original":
                source = torch.from_numpy(vision[TOKEN_INDEX][row, :valid])
                n = self.geometry["num_patches"]
                # patches keep their raster offset; CLS and tokens without a single source sit at the end
                offsets = torch.where(source >= 1, source - 1, torch.full_like(source, n - 1))
                positions.append(position + offsets)
                position += n
            else:
                positions.append(torch.arange(position, position + valid))
                position += valid
            cursor = slot + 1
        text = ids[cursor:]
        pieces.append(self.llm.embed(text))
        positions.append(torch.arange(position, position + len(text)))
        return Sequence(torch.cat(pieces), torch.cat(positions), counts)



def llava_config_of(record: dict) -> LlavaConfig:
    """The LLaVA config of the checkpoint an export came from (the model's own for random weights)."""
    model = record["model"]
    if model["random_weights"]:
        return MODELS.get(model["name"]).make_config()
    return read_llava_config(Path(model["weights"]))


def left_padded(sequences: list[Sequence]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, D) embeds, (B, T) attention mask and (B, T) position ids, padded on the left."""
    length = max(len(s.embeds) for s in sequences)
    width = sequences[0].embeds.shape[1]
    embeds = torch.zeros(len(sequences), length, width, dtype=sequences[0].embeds.dtype,
                         device=sequences[0].embeds.device)
    mask = torch.zeros(len(sequences), length, dtype=torch.long)
    positions = torch.zeros(len(sequences), length, dtype=torch.long)
    for b, s in enumerate(sequences):
        embeds[b, length - len(s.embeds):] = s.embeds
        mask[b, length - len(s.embeds):] = 1
        positions[b, length - len(s.embeds):] = s.positions
    return embeds, mask, positions
