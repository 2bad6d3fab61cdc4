"""Multi-camera input: C = 3 cameras in one prompt, one graph batch of C (`--batch 3`), each camera with its own
budget. The unpruned pipeline equals HF's unmodified generate() given the three inputs for the three model families
(LLaVA-1.5 images, Qwen2.5-VL videos, Qwen3-VL videos); a pruned batch-3 export gives each camera its K tokens,
the same as a batch-1 export gives it alone."""

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlavaForConditionalGeneration

from tests.pictures import picture
from tests.runtime.test_video_pipeline import (  # noqa: F401 (videos: the module's fixture of three clips)
    FRAMES, QUESTION, QWEN3, QWEN25, VIDEO_PAD, prompt_ids, setup, video_patch_rows, video_pixels, video_span, videos,
)
from vtp_export.models import MODELS
from vtp_export.runtime import Pipeline

pytestmark = pytest.mark.slow

CAMERAS = 3
NEW_TOKENS = 8


def test_three_llava_cameras_equal_hf_generate(tiny_bundle, cached_export):
    model = MODELS.get("llava15")
    folder = cached_export("llava15", "none", None, "cpu", weights=tiny_bundle, verify_samples=1, batch=CAMERAS)
    pipe = Pipeline.from_dir(folder)
    images = [picture(seed) for seed in range(CAMERAS)]
    answer = pipe.answer(QUESTION, images, max_new_tokens=NEW_TOKENS)
    hf = LlavaForConditionalGeneration.from_pretrained(tiny_bundle).eval()
    prompt = model.prompt((model.image_token * 576) * CAMERAS + "\n" + QUESTION, hf.config)
    ids = AutoTokenizer.from_pretrained(tiny_bundle)(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        reference = hf.generate(input_ids=ids, pixel_values=torch.from_numpy(pipe.preprocess(images)),
                                max_new_tokens=NEW_TOKENS, do_sample=False)
    assert answer.token_ids == reference[0, ids.shape[1]:].tolist()
    assert answer.image_tokens == [576] * CAMERAS


@pytest.mark.parametrize("which", ["qwen2.5-vl", "qwen3-vl"])
def test_three_video_cameras_equal_hf_generate(which, qwen_checkpoint, qwen3_checkpoint, videos, cached_export):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    checkpoint = qwen_checkpoint if which == "qwen2.5-vl" else qwen3_checkpoint
    model, config, options, tokens, patch = setup(QWEN25 if which == "qwen2.5-vl" else QWEN3, checkpoint)
    folder = cached_export(which, "none", None, "cpu", weights=checkpoint, verify_samples=1, batch=CAMERAS,
                           model_options=options)
    pipe = Pipeline.from_dir(folder)
    prompt = "".join(f"Camera {i}: {model.video_token}\n" for i in range(CAMERAS)) + QUESTION
    answer = pipe.answer(prompt, list(videos), max_new_tokens=NEW_TOKENS)
    hf_class = Qwen2_5_VLForConditionalGeneration if which == "qwen2.5-vl" else Qwen3VLForConditionalGeneration
    hf = hf_class.from_pretrained(checkpoint).eval()
    clips = [video_pixels(model, pipe.geometry, path) for path in videos]
    spans = "".join(f"Camera {i}: {video_span(model, tokens, times, VIDEO_PAD)}\n"
                    for i, (_, _, times) in enumerate(clips))
    ids = prompt_ids(model, config, checkpoint, spans)
    rows, grids = zip(*(video_patch_rows(clip[0], patch) for clip in clips))
    extra = {"second_per_grid_ts": torch.tensor([2 / fps for _, fps, _ in clips])} if which == "qwen2.5-vl" else {}
    with torch.no_grad():
        reference = hf.generate(input_ids=ids, pixel_values_videos=torch.cat(rows), video_grid_thw=torch.cat(grids),
                                mm_token_type_ids=(ids == VIDEO_PAD).int() * 2, max_new_tokens=NEW_TOKENS,
                                do_sample=False, **extra)
    assert answer.token_ids == reference[0, ids.shape[1]:].tolist()
    assert answer.image_tokens == [FRAMES // 2 * tokens] * CAMERAS


def test_each_camera_has_its_own_budget(qwen_checkpoint, videos, cached_export):
    options = setup(QWEN25, qwen_checkpoint)[2]
    batched, single = (Pipeline.from_dir(cached_export("qwen2.5-vl", "divprune", 48, "cpu", weights=qwen_checkpoint,
                                                       verify_samples=1, batch=batch, model_options=options))
                       for batch in (CAMERAS, 1))
    together = batched.encode_images(list(videos), [QUESTION] * CAMERAS)
    for camera, path in enumerate(videos):
        alone = single.encode_images([path], [QUESTION])
        assert (together["token_index"][camera] == alone["token_index"][0]).all()
        np.testing.assert_allclose(together["image_embeds"][camera], alone["image_embeds"][0], atol=1e-5)
    groups = together["token_index"] // (96 + 1)
    assert [[int((row == g).sum()) for g in range(FRAMES // 2)] for row in groups] == [[24, 24]] * CAMERAS
    answer = batched.answer(QUESTION, list(videos), max_new_tokens=4)
    assert answer.image_tokens == [48] * CAMERAS
