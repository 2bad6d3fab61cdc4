"""The runtime on video exports (--frames 4: two temporal groups) against HF on the tiny Qwen2.5-VL and Qwen3-VL
checkpoints, from a video file written with PyAV: `none` equals HF's unmodified generate() given the video
(pixel_values_videos, video_grid_thw, Qwen2.5-VL's second_per_grid_ts, Qwen3-VL's timestamped prompt); a per-group
method and evs equal HF's generate() given the same pruning at the positions get_rope_index gives their tokens;
three cameras in one prompt; the bad inputs."""

import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from tests.runtime.hf_reference import exports_on_demand
from tests.towers.test_qwen_video import video_patch_rows
from vtp_export.checkpoint.load import load_vision_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.contract import WeightsFolder
from vtp_export.export.graph import VisionGraph
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.runtime import Pipeline
from vtp_export.util.video import sample_indices

pytestmark = pytest.mark.slow

FRAMES, GROUPS = 4, 2
QUESTION = "What happens in the video?"
NEW_TOKENS = 8
IMAGE_PAD, VIDEO_PAD = 151655, 151656
# (model, export size, merged rows, cols, patch)
QWEN25 = (MODELS.get("qwen2.5-vl"), "224x336", 8, 12, 14)
QWEN3 = (MODELS.get("qwen3-vl"), "256x320", 8, 10, 16)
KEEP = {"divprune": 48, "evs": 120}  # divprune: 24 per group; evs: the first group's 80 or 96 and the rest


def write_video(path, seed: int, frames: int = 12, fps: int = 4, size=(160, 128)) -> None:
    """A moving random picture, `frames` frames at `fps` (MPEG-4 in MP4)."""
    rng = np.random.default_rng(seed)
    base = rng.random((size[1], size[0], 3)) * 255
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            picture = np.roll(base, 8 * i, axis=1).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())


def decoded(path) -> tuple[list[Image.Image], list[int], float]:
    """All frames of the file (PyAV), HF's sample_frames indices for FRAMES frames, and the stream's rate."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_image() for frame in container.decode(stream)]
        fps = float(stream.average_rate)
    indices = torch.arange(0, len(frames), len(frames) / FRAMES).int().tolist()
    assert indices == sample_indices(len(frames), FRAMES)
    return frames, indices, fps


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    paths = [folder / f"camera{i}.mp4" for i in range(3)]
    for i, path in enumerate(paths):
        write_video(path, i)
    return paths


@pytest.fixture(scope="module")
def hf25(qwen_checkpoint):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_checkpoint).eval()


@pytest.fixture(scope="module")
def hf3(qwen3_checkpoint):
    return Qwen3VLForConditionalGeneration.from_pretrained(qwen3_checkpoint).eval()


def setup(which, checkpoint):
    model, size, rows, cols, patch = which
    config = read_model_config(model, WeightsFolder(checkpoint))
    return model, config, {"image_size": size, "frames": str(FRAMES)}, rows * cols, patch


def video_pixels(model, geometry, path) -> tuple[torch.Tensor, float, list[float]]:
    """(F, 3, H, W) the sampled frames as the graph takes them, the sampled frame rate, the frames' times."""
    frames, indices, fps = decoded(path)
    clip_frames = [frames[i].convert("RGB") for i in indices]
    pixels = torch.from_numpy(model.preprocess(clip_frames, geometry))
    return pixels, FRAMES / len(frames) * fps, [i / fps for i in indices]


def video_span(model, tokens: int, times: list[float], pad: int) -> str:
    """The unpruned video's prompt text as HF's processors expand it (`tokens` pads per group)."""
    pads = "<|video_pad|>" if pad == VIDEO_PAD else "<|image_pad|>"
    if model.name == "qwen2.5-vl":
        return "<|vision_start|>" + pads * (tokens * GROUPS) + "<|vision_end|>"
    return "".join(f"<{(times[2 * g] + times[2 * g + 1]) / 2:.1f} seconds><|vision_start|>{pads * tokens}"
                   "<|vision_end|>" for g in range(GROUPS))


def prompt_ids(model, config, checkpoint, spans: str) -> torch.Tensor:
    prompt = model.prompt(spans + QUESTION, config)
    return AutoTokenizer.from_pretrained(checkpoint)(prompt, return_tensors="pt").input_ids


@pytest.mark.parametrize("which", ["qwen2.5-vl", "qwen3-vl"])
def test_none_equals_unmodified_hf_generate_on_a_video(which, qwen_checkpoint, qwen3_checkpoint, hf25, hf3, videos,
                                                       cached_export):
    checkpoint, hf = (qwen_checkpoint, hf25) if which == "qwen2.5-vl" else (qwen3_checkpoint, hf3)
    model, config, options, tokens, patch = setup(QWEN25 if which == "qwen2.5-vl" else QWEN3, checkpoint)
    folder = exports_on_demand(cached_export, which, checkpoint, 0, model_options=options)("none")
    pipe = Pipeline.from_dir(folder)
    answer = pipe.answer(QUESTION, [videos[0]], max_new_tokens=NEW_TOKENS)
    pixels, sampled_fps, times = video_pixels(model, pipe.geometry, videos[0])
    ids = prompt_ids(model, config, checkpoint, video_span(model, tokens, times, VIDEO_PAD))
    rows, grid = video_patch_rows(pixels, patch)
    extra = {"second_per_grid_ts": torch.tensor([2 / sampled_fps])} if which == "qwen2.5-vl" else {}
    with torch.no_grad():
        reference = hf.generate(input_ids=ids, pixel_values_videos=rows, video_grid_thw=grid,
                                mm_token_type_ids=(ids == VIDEO_PAD).int() * 2, max_new_tokens=NEW_TOKENS,
                                do_sample=False, **extra)
    assert answer.token_ids == reference[0, ids.shape[1]:].tolist()
    assert answer.prompt_tokens == ids.shape[1]


def hf_ids_with_pruning(which, hf, checkpoint, method_name: str, path) -> list[int]:
    """HF's generate() with the PyTorch pruning of the video's tokens in its span, each at the position
    get_rope_index gives its source token in the unpruned video prompt (Qwen3-VL: each group's kept tokens between
    its timestamp and <|vision_end|>, their DeepStack levels as HF's own encoder output)."""
    model, config, options, tokens, _ = setup(QWEN25 if which == "qwen2.5-vl" else QWEN3, checkpoint)
    stack = load_vision_stack(model, config, options, WeightsFolder(checkpoint))
    method = METHODS.get(method_name).create(stack.geometry, KEEP[method_name], {})
    pixels, sampled_fps, times = video_pixels(model, stack.geometry, path)
    full = prompt_ids(model, config, checkpoint, video_span(model, tokens, times, VIDEO_PAD))
    grid = torch.tensor([[GROUPS, stack.geometry.grid_rows * 2, stack.geometry.grid_cols * 2]])
    kwargs = {"second_per_grid_ts": torch.tensor([2 / sampled_fps])} if which == "qwen2.5-vl" else {}
    positions = hf.model.get_rope_index(full, (full == VIDEO_PAD).int() * 2, video_grid_thw=grid, **kwargs)[0]
    pad_slots = (full[0] == VIDEO_PAD).nonzero()[:, 0]  # the video's tokens in the unpruned prompt, video order
    with torch.no_grad():
        outputs = VisionGraph(model, stack, method)(pixels.unsqueeze(0))
        embeds, token_index = outputs[0][0], outputs[1][0]
        group, within = token_index // (tokens + 1), token_index % (tokens + 1)
        sources = pad_slots[torch.where(token_index >= 0, group * tokens + within - 1, GROUPS * tokens - 1)]
        text = torch.ones(full.shape[1], dtype=torch.bool)
        text[pad_slots] = False
        if which == "qwen2.5-vl":
            start, end = int(pad_slots[0]), int(pad_slots[-1]) + 1
            embed = hf.get_input_embeddings()
            inputs_embeds = torch.cat([embed(full[0, :start]), embeds, embed(full[0, end:])]).unsqueeze(0)
            index = torch.cat([torch.arange(start), sources, torch.arange(end, full.shape[1])])
            generated = hf.generate(inputs_embeds=inputs_embeds, position_ids=positions[:, :, index],
                                    attention_mask=torch.ones(inputs_embeds.shape[:2], dtype=torch.long),
                                    max_new_tokens=NEW_TOKENS, do_sample=False)
            return generated[0].tolist()
        counts = [int((group == g).sum()) for g in range(GROUPS)]
        spans = "".join(f"<{(times[2 * g] + times[2 * g + 1]) / 2:.1f} seconds><|vision_start|>"
                        f"{'<|image_pad|>' * counts[g]}<|vision_end|>" for g in range(GROUPS))
        ids = prompt_ids(model, config, checkpoint, spans)
        # every prompt token's source in the unpruned prompt: text in order, each kept token at its source
        index = torch.empty(ids.shape[1], dtype=torch.long)
        index[ids[0] != IMAGE_PAD] = torch.nonzero(text)[:, 0]
        index[ids[0] == IMAGE_PAD] = sources
        encoded = BaseModelOutputWithDeepstackFeatures(pooler_output=(embeds,),
                                                       deepstack_features=[(level,) for level in outputs[2][0]])
        generated = hf.generate(input_ids=ids, mm_encoder_outputs={"image": encoded},
                                position_ids=positions[:, :, index], attention_mask=torch.ones_like(ids),
                                mm_token_type_ids=(ids == IMAGE_PAD).int(), max_new_tokens=NEW_TOKENS,
                                do_sample=False)
    return generated[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("which", ["qwen2.5-vl", "qwen3-vl"])
@pytest.mark.parametrize("method", ["divprune", "evs"])
def test_pruned_video_equals_hf_with_the_same_pruning(which, method, qwen_checkpoint, qwen3_checkpoint, hf25, hf3,
                                                      videos, cached_export):
    checkpoint, hf = (qwen_checkpoint, hf25) if which == "qwen2.5-vl" else (qwen3_checkpoint, hf3)
    options = setup(QWEN25 if which == "qwen2.5-vl" else QWEN3, checkpoint)[2]
    folder = cached_export(which, method, KEEP[method], "cpu", weights=checkpoint, verify_samples=1,
                           model_options=options)
    pipe = Pipeline.from_dir(folder)
    answer = pipe.answer(QUESTION, [videos[1]], max_new_tokens=NEW_TOKENS)
    assert answer.token_ids == hf_ids_with_pruning(which, hf, checkpoint, method, videos[1])
    assert answer.image_tokens == [KEEP[method]]


def test_run_command_takes_a_video_and_frames(qwen_checkpoint, videos, cached_export, tmp_path):
    options = setup(QWEN25, qwen_checkpoint)[2]
    folder = cached_export("qwen2.5-vl", "evs", KEEP["evs"], "cpu", weights=qwen_checkpoint, verify_samples=1,
                           model_options=options)
    frames, indices, _ = decoded(videos[0])
    paths = []
    for i in indices:
        paths.append(tmp_path / f"frame{i}.png")
        frames[i].save(paths[-1])
    command = [sys.executable, "-m", "vtp_export", "run", str(folder), "--prompt", QUESTION, "--max-new-tokens", "3"]
    for given in (["--video", str(videos[0])], ["--frame", *map(str, paths)]):
        result = subprocess.run([*command, *given], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert f"({KEEP['evs']} visual from 1 video)" in result.stdout
    short = tmp_path / "short.mp4"
    write_video(short, 0, frames=3, size=(64, 48))
    for given, message in [(["--video", str(short)], "has 3 frames; the export samples 4"),
                           (["--frame", *map(str, paths[:3])], "a video of 3 frames was given"),
                           (["--image", str(paths[0])], "takes videos of 4 frames")]:
        result = subprocess.run([*command, *given], capture_output=True, text=True, timeout=300)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_a_video_export_profiles(qwen_checkpoint, cached_export):
    from vtp_export.runtime.profile import profile_export

    options = setup(QWEN25, qwen_checkpoint)[2]
    folder = cached_export("qwen2.5-vl", "evs", KEEP["evs"], "cpu", weights=qwen_checkpoint, verify_samples=1,
                           model_options=options)
    profile = profile_export(folder, runs=1, warmup=0, new_tokens=2)
    assert profile.tokens.visual == KEEP["evs"] and set(profile.stages) >= {"vision_graph", "pruning_stage", "prefill"}
