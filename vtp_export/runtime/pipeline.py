"""Pipeline: an export folder's vision graph stitched to the LLM, answering questions about images.

    from vtp_export.runtime import Pipeline
    with Pipeline.from_dir("exports/llava15-holov-k64-orin") as pipe:  # LLM: the checkpoint it was exported from
        answer = pipe.answer("What is in the picture?", ["photo.jpg"], on_text=lambda b, piece: print(piece, end=""))

Every failure a caller can cause is a PipelineError (one line; the host process is never exited). With the
onnxruntime or TensorRT vision backend and the llama.cpp LLM backend nothing here imports PyTorch.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vtp_export.errors import PipelineError, VtpError
from vtp_export.models import MODELS
from vtp_export.models.tokenizer import clip_input_ids, load_tokenizer
from vtp_export.onnx.names import (
    DEEPSTACK_EMBEDS, IMAGE_EMBEDS, INPUT_IDS, NUM_VALID, PIXEL_VALUES, TEXT_EMBEDS, TOKEN_INDEX,
)
from vtp_export.records.export import (
    CLIP_TOKENIZER_FOLDER, IMAGE_NEWLINE_FILE, ExportRecord, read_export, runtime_config,
)
from vtp_export.runtime.backends import VisionBackend, open_backend
from vtp_export.runtime.llm.backends import DEFAULT_LLM_BACKEND, LLM_BACKENDS, LlmBackend, llm_backend
from vtp_export.runtime.llm.protocol import POSITION_POLICIES, LanguageModelBackend, LlmRequest, Segment
from vtp_export.util.images import ImageInput, load_image
from vtp_export.util.video import VideoClip, VideoInput, load_video

IMAGE_SIZES = "image_sizes"  # (height, width) of each original image, beside the vision graph's outputs
VIDEO_CLIPS = "video_clips"  # video exports: each video's VideoClip (its frame times), beside the outputs

# static: the vision graph's tokens as they are; hf: AnyRes models' unpruned tokens unpadded by the image's size
# with image_newline after every grid row, as HF's pack_image_features (to prove the pipeline equals HF).
LAYOUTS = ("static", "hf")

OnText = Callable[[int, str], None]  # (request index, new text), as tokens are generated


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    image_tokens: list[int]  # visual tokens given to the LLM for each image (each video)
    time_to_first_token_s: float
    decode_tokens_per_s: float | None
    backend: str
    llm_backend: str
    position_ids: str


class Pipeline:
    def __init__(self, folder: Path, record: ExportRecord, config: Any, backend: VisionBackend,
                 llm: LanguageModelBackend, clip_tokenizer, position_ids: str, newline: np.ndarray | None = None) -> None:
        self.folder, self.record, self.config, self.backend, self.llm = folder, record, config, backend, llm
        self.model = MODELS.get(record.model.name)
        self.geometry = record.model.geometry
        self.clip_tokenizer, self.position_ids = clip_tokenizer, position_ids
        self.newline = newline  # layout="hf": the checkpoint's image_newline

    @classmethod
    def from_dir(cls, folder: str | Path, llm: str | Path | LanguageModelBackend | None = None,
                 backend: str | None = None, llm_backend: str = DEFAULT_LLM_BACKEND, position_ids: str | None = None,
                 llm_layers: int | None = None, device: str = "cpu", dtype: str = "float32",
                 layout: str = "static") -> "Pipeline":
        """llm: None for the checkpoint the export came from (seeded random weights for random exports, cut
        to llm_layers where given), a HF checkpoint folder (transformers) or GGUF file (llama.cpp), or a
        backend object. backend: None (a matching TensorRT engine, else onnxruntime), "onnxruntime",
        "tensorrt" or "torch". llm_backend: one of runtime/llm/backends.py, "transformers" or "llama.cpp" (a
        GGUF from `vtp-export llm`, sequential positions only; device, dtype and llm_layers are the
        transformers backend's). position_ids: None for the model's own policy (sequential for LLaVA, original
        for Qwen2.5-VL's M-RoPE). layout: "static", or "hf" for an unpruned AnyRes export (see LAYOUTS)."""
        folder = Path(folder)
        if position_ids is not None and position_ids not in POSITION_POLICIES:
            raise PipelineError(f"position_ids={position_ids!r} is not one of {', '.join(POSITION_POLICIES)}")
        declared = llm_backend_for(llm_backend, llm)
        if llm_layers is not None and llm_layers < 1:
            raise PipelineError(f"llm_layers={llm_layers} must be at least 1")
        if declared is not None and llm_layers is not None and declared.layer_cut_refusal is not None:
            raise PipelineError(f"llm_layers: {declared.layer_cut_refusal}")
        try:
            record = read_export(folder)
            model = MODELS.get(record.model.name)
            config = runtime_config(folder, model)
        except VtpError as error:
            raise PipelineError(str(error)) from None
        policy = position_ids or model.default_position_ids
        if declared is not None and policy not in declared.policies(model.mrope):
            raise PipelineError(f"position_ids={policy!r}: {declared.position_refusal}")
        if record.method.text_conditioned and "text" not in record.graphs:
            raise PipelineError(f"{folder}: {record.method.name} is text-conditioned but the export has no text graph")
        newline = hf_layout_newline(folder, record, layout)
        language_model = llm if not isinstance(llm, (str, Path, type(None))) else \
            declared.open(LlmRequest(folder, record, config, llm, llm_layers, device, dtype))
        clip_tokenizer = load_tokenizer(folder / CLIP_TOKENIZER_FOLDER) if record.method.text_conditioned else None
        vision = open_backend(folder, record, backend)
        return cls(folder, record, config, vision, language_model, clip_tokenizer, policy, newline)

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()
        self.llm.close()

    @property
    def placeholder(self) -> str:
        """The prompt placeholder of one input: the model's image placeholder, or its video placeholder for a video
        export (each input then a video: a file, a list of frames or a VideoClip)."""
        return self.model.video_token if self.geometry.frames else self.model.image_token

    def answer(self, prompt: str, images: list[ImageInput] | list[VideoInput], max_new_tokens: int = 64,
               temperature: float = 0.0, seed: int = 0, on_text: OnText | None = None) -> Answer:
        return self.answer_batch([(prompt, images)], max_new_tokens, temperature, seed, on_text)[0]

    def answer_batch(self, requests: list[tuple[str, list[ImageInput] | list[VideoInput]]], max_new_tokens: int = 64,
                     temperature: float = 0.0, seed: int = 0, on_text: OnText | None = None) -> list[Answer]:
        """Several prompts, each with its images (one per image placeholder in the prompt; prepended if it has
        none)."""
        if not requests:
            raise PipelineError("answer_batch needs at least one (prompt, images) request")
        if max_new_tokens < 1:
            raise PipelineError(f"max_new_tokens={max_new_tokens} must be at least 1")
        if not (math.isfinite(temperature) and temperature >= 0):
            raise PipelineError(f"temperature={temperature} must be a finite number >= 0 (0: greedy)")
        placeholder = self.placeholder
        contents = [self.content(prompt, images) for prompt, images in requests]
        questions = [prompt.replace(placeholder, "").strip() for prompt, _ in requests]
        flat = [image for _, images in requests for image in images]
        owners = [i for i, (_, images) in enumerate(requests) for _ in images]
        prompt_embeds = self.prompt_embeds(contents) if self.record.method.prompt_conditioned and flat else None
        vision = self.encode_images(flat, [questions[i] for i in owners],
                                    None if prompt_embeds is None else prompt_embeds[owners])
        prompts, counts, start = [], [], 0
        for content, (_, images) in zip(contents, requests):
            segments = self.segments(content, vision, range(start, start + len(images)))
            prompts.append(segments)
            tokens = [len(s) for s in segments if s.embeds is not None]
            parts = len(tokens) // len(images) if images else 1  # a video's parts (Qwen3-VL: its groups) together
            counts.append([sum(tokens[i:i + parts]) for i in range(0, len(tokens), parts)])
            start += len(images)
        longest = max(sum(len(s) for s in segments) for segments in prompts)
        if longest + max_new_tokens > self.llm.context_length:
            raise PipelineError(f"prompt of {longest} tokens (images included) + {max_new_tokens} new tokens exceeds "
                                f"the LLM's context of {self.llm.context_length}")
        streamed: dict[int, list[int]] = {}
        shown: dict[int, str] = {}

        def on_token(b: int, token: int) -> None:
            streamed.setdefault(b, []).append(token)
            text = self.llm.decode(streamed[b])
            if on_text is not None and len(text) > len(shown.get(b, "")) and not text.endswith("\ufffd"):
                on_text(b, text[len(shown.get(b, "")):])
                shown[b] = text

        generated = self.llm.generate(prompts, max_new_tokens, temperature, seed, on_token)
        return [Answer(self.llm.decode(ids), ids, prompt_tokens, image_tokens, generated.time_to_first_token_s,
                       generated.decode_tokens_per_s, self.backend.name, self.llm.name, self.position_ids)
                for ids, prompt_tokens, image_tokens in zip(generated.token_ids, generated.prompt_tokens, counts)]

    def content(self, prompt: str, images: list[ImageInput]) -> str:
        placeholder, noun = self.placeholder, "video" if self.geometry.frames else "image"
        placeholders = prompt.count(placeholder)
        if placeholders == 0:
            return placeholder * len(images) + self.model.image_separator + prompt if images else prompt
        if placeholders != len(images):
            raise PipelineError(f"the prompt has {placeholders} {placeholder} placeholder{'s' * (placeholders != 1)} "
                                f"for {len(images)} {noun}{'s' * (len(images) != 1)}")
        return prompt

    def preprocess(self, images: list[ImageInput]) -> np.ndarray:
        """Pixel values of each image (each video, for a video export) as the vision graph takes them, with the HF
        processor's code."""
        return self.loaded(images)[0]

    def loaded(self, images: list[ImageInput]) -> tuple[np.ndarray, list[tuple[int, int]], list[VideoClip]]:
        """preprocess()'s pixel values, each input's (height, width), and a video export's clips."""
        if self.geometry.frames:
            clips = [load_video(video, self.geometry.frames) for video in images]
            return self.model.preprocess_video(clips, self.geometry), [clip.size for clip in clips], clips
        loaded = [load_image(image) for image in images]
        return self.model.preprocess(loaded, self.geometry), [(image.height, image.width) for image in loaded], []

    def encode_images(self, images: list[ImageInput], questions: list[str],
                      text_embeds: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Run the vision graph over all images in chunks of its batch size; outputs stacked per image. The graph's
        text_embeds of each image, where it takes them: `text_embeds` where given (answer_batch: the mean embedding
        of each image's prompt), else CLIP's text graph on its question, or the prompt-conditioned methods' mean
        embedding of the one-image prompt the question makes."""
        if not images:
            return {}
        pixels, sizes, clips = self.loaded(images)
        chunk = self.record.graphs["vision"].batch or len(images)
        if text_embeds is None and self.clip_tokenizer is not None:
            text_embeds = self.text_embeds(questions)
        elif text_embeds is None and self.record.method.prompt_conditioned:
            text_embeds = self.prompt_embeds([self.content(question, [image])
                                              for question, image in zip(questions, images)])
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
        stacked = {name: np.concatenate(parts) for name, parts in outputs.items()}
        stacked[IMAGE_SIZES] = np.array(sizes)
        if self.geometry.frames:
            stacked[VIDEO_CLIPS] = np.empty(len(clips), dtype=object)
            stacked[VIDEO_CLIPS][:] = clips
        return stacked

    def text_embeds(self, questions: list[str]) -> np.ndarray:
        graph = self.record.graphs["text"]
        ids = clip_input_ids(self.clip_tokenizer, questions, graph.inputs[0].shape[1])
        if graph.batch is None:
            return self.backend.run("text", {INPUT_IDS: ids})[TEXT_EMBEDS]
        rows = [self.backend.run("text", {INPUT_IDS: np.repeat(ids[i:i + 1], graph.batch, axis=0)})[TEXT_EMBEDS][:1]
                for i in range(len(ids))]
        return np.concatenate(rows)

    def prompt_embeds(self, contents: list[str]) -> np.ndarray:
        """(R, D_llm) float32, for each request's content (its image placeholders in place): the mean LLM input
        embedding of its templated prompt's tokens outside the image spans, the text OpenVINO GenAI's CDPruner
        conditions on in the Qwen family (methods/cdpruner.py)."""
        span = self.model.image_span_ids(self.config)
        rows = [self.llm.mean_input_embedding([i for i in self.prompt_ids(content).tolist() if i not in span])
                for content in contents]
        return np.stack(rows)

    def prompt_ids(self, content: str) -> np.ndarray:
        """(T,) int64 ids of the model's conversation template around `content`, each image placeholder one id."""
        return np.array(self.llm.tokenize(self.model.prompt(content, self.config)), dtype=np.int64)

    def segments(self, content: str, vision: dict[str, np.ndarray], image_rows: range) -> list[Segment]:
        """The prompt as text and image segments with their position ids (and, for a DeepStack model, each image's
        deepstack_embeds rows: the same slots as its image_embeds). A video's tokens are one segment or one per
        part of the model's video layout (Qwen3-VL: per temporal group, between timestamps)."""
        parts = [(row, None, 0) for row in image_rows]  # (vision row, the row's slots in this segment, video part)
        if self.geometry.frames:
            content, parts = self.video_content(content, vision, image_rows)
        ids = self.prompt_ids(content)
        slots = np.flatnonzero(ids == self.llm.image_token_id).tolist()
        segments, cursor, position = [], 0, 0
        for slot, (row, take, part) in zip(slots, parts):
            text = ids[cursor:slot]
            segments.append(Segment(self.model.text_positions(position, len(text)), token_ids=text))
            position += len(text)
            valid = int(vision[NUM_VALID][row]) if NUM_VALID in vision else vision[IMAGE_EMBEDS].shape[1]
            take = slice(valid) if take is None else take
            embeds, token_index = vision[IMAGE_EMBEDS][row, take], vision[TOKEN_INDEX][row, take]
            if self.newline is not None:
                embeds = self.model.hf_layout(embeds, tuple(vision[IMAGE_SIZES][row]), self.geometry, self.newline)
                positions, position = np.arange(position, position + len(embeds)), position + len(embeds)
            elif self.geometry.frames:
                positions, position = self.model.video_positions(position, token_index, self.geometry,
                                                                 self.position_ids, vision[VIDEO_CLIPS][row],
                                                                 self.config, part)
            else:
                positions, position = self.model.image_positions(position, token_index, self.geometry,
                                                                 self.position_ids)
            deepstack = vision[DEEPSTACK_EMBEDS][row][:, take] if DEEPSTACK_EMBEDS in vision else None
            segments.append(Segment(positions, embeds=embeds, deepstack=deepstack))
            cursor = slot + 1
        text = ids[cursor:]
        segments.append(Segment(self.model.text_positions(position, len(text)), token_ids=text))
        return segments

    def video_content(self, content: str, vision: dict[str, np.ndarray],
                      rows: range) -> tuple[str, list[tuple[int, np.ndarray, int]]]:
        """`content` with each video placeholder replaced by the model's video layout (video_prompt: one image
        placeholder per part), and for each of those placeholders its video's row, slots and part."""
        pieces = content.split(self.model.video_token)
        text, parts = pieces[0], []
        for row, piece in zip(rows, pieces[1:]):
            text += self.model.video_prompt(vision[VIDEO_CLIPS][row], self.geometry) + piece
            split = self.model.video_parts(vision[TOKEN_INDEX][row], self.geometry)
            parts += [(row, take, part) for part, take in enumerate(split)]
        return text, parts


def hf_layout_newline(folder: Path, record: ExportRecord, layout: str) -> np.ndarray | None:
    """The checkpoint's image_newline, as the export folder carries it, where layout="hf" (checked to be
    possible), else None."""
    if layout not in LAYOUTS:
        raise PipelineError(f"layout={layout!r} is not one of {', '.join(LAYOUTS)}")
    if layout == "static":
        return None
    if record.model.geometry.crops == 1 or record.method.name != "none":
        raise PipelineError("layout='hf' lays out the unpruned tokens of an AnyRes model (llava-next, method none); "
                            f"this export is {record.model.name} with {record.method.name}")
    if IMAGE_NEWLINE_FILE not in {entry.file for entry in record.runtime_files}:
        raise PipelineError("layout='hf' needs the checkpoint's image_newline; this export has random weights")
    return np.load(folder / IMAGE_NEWLINE_FILE)


def llm_backend_for(name: str, llm: str | Path | LanguageModelBackend | None) -> LlmBackend | None:
    """The declared backend that will run: the named one, or that of a backend object given as `llm` (None for
    an object of an unregistered backend)."""
    declared = llm_backend(name)
    if isinstance(llm, (str, Path, type(None))):
        return declared
    return LLM_BACKENDS.get(llm.name) if llm.name in LLM_BACKENDS else None
