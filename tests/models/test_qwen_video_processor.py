"""The Qwen models' video pixels against HF's own video processors (Qwen2VLVideoProcessor for Qwen2.5-VL,
Qwen3VLVideoProcessor for Qwen3-VL): `pixel_values_videos` and `video_grid_thw` of the frames the runtime feeds the
graph, patched as HF patches them, within 1e-6.

HF's video processors need torchvision, whose PyPI wheel does not load with the CPU torch of the project's venv; the
serving venv has it working (tools/setup_serve_venv.sh), so HF's side runs there, in a subprocess. The graph's size
is static, so the runtime resizes every frame to the export's size as it does an image; HF's processor is given the
resized frames, which its smart_resize leaves as they are within the checkpoints' pixel bounds (below), and does the
rest: rescale, normalisation, temporal patches of two frames, merge units."""

import json
import subprocess
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from tests.serve.server import SERVE_VENV, requires_serve_venv
from tests.towers.test_qwen_video import video_patch_rows
from vtp_export.models import MODELS
from vtp_export.util.video import VideoClip

pytestmark = [pytest.mark.serve, requires_serve_venv]

# (model, export size, frames, patch); frames drawn at 190x150, another aspect than every export size
CASES = [("qwen2.5-vl", "224x336", 4, 14), ("qwen2.5-vl", "392x280", 6, 14), ("qwen3-vl", "256x320", 4, 16),
         ("qwen3-vl", "320x192", 6, 16)]
# The hub checkpoints' pixel bounds (preprocessor configs): Qwen2.5-VL min_pixels 3136, max_pixels 12845056;
# Qwen3-VL's video processor's own defaults
HF_SIDE = """
import json, sys
import numpy as np
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

processors = {"qwen2.5-vl": Qwen2VLVideoProcessor(size={"shortest_edge": 3136, "longest_edge": 12845056}),
              "qwen3-vl": Qwen3VLVideoProcessor()}
for case in json.loads(sys.argv[1]):
    frames = np.load(case["frames"])
    out = processors[case["model"]](videos=[frames], return_tensors="np", do_sample_frames=False)
    np.savez(case["hf"], pixel_values_videos=out["pixel_values_videos"], video_grid_thw=out["video_grid_thw"])
"""


def random_clip(frames: int, seed: int) -> VideoClip:
    rng = np.random.default_rng(seed)
    pictures = tuple(Image.fromarray((rng.random((150, 190, 3)) * 255).astype(np.uint8)) for _ in range(frames))
    return VideoClip(pictures, tuple(i / 2 for i in range(frames)), 2.0)


@dataclass
class Pixels:
    """One case's `pixel_values_videos` (patch rows) and `video_grid_thw`."""

    rows: np.ndarray
    grid: list[list[int]]


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory) -> list[tuple[Pixels, Pixels]]:
    """Per case: HF's video processor's pixels and the runtime's, patched by HF's rule."""
    folder = tmp_path_factory.mktemp("video-processors")
    cases, ours = [], []
    for i, (name, size, frames, patch) in enumerate(CASES):
        model = MODELS.get(name)
        geometry = model.geometry(model.default_config(), model.resolved_options({"image_size": size,
                                                                                   "frames": str(frames)}))
        clip = random_clip(frames, i)
        resized = np.stack([np.asarray(frame.resize((geometry.image_width, geometry.image_height),
                                                    Image.Resampling.BICUBIC)) for frame in clip.frames])
        np.save(folder / f"{i}.npy", resized)
        cases.append({"model": name, "frames": str(folder / f"{i}.npy"), "hf": str(folder / f"{i}-hf.npz")})
        rows, grid = video_patch_rows(torch.from_numpy(model.preprocess_video([clip], geometry)[0]), patch)
        ours.append(Pixels(rows.numpy(), grid.tolist()))
    hf_side = subprocess.run([str(SERVE_VENV / "bin" / "python"), "-c", HF_SIDE, json.dumps(cases)], timeout=300,
                             capture_output=True, text=True)
    assert hf_side.returncode == 0, hf_side.stderr[-4000:]
    hf = [np.load(case["hf"]) for case in cases]
    return [(Pixels(out["pixel_values_videos"], out["video_grid_thw"].tolist()), mine) for out, mine in zip(hf, ours)]


@pytest.mark.parametrize("case", range(len(CASES)), ids=[f"{m}-{s}-{f}f" for m, s, f, _ in CASES])
def test_video_pixels_equal_hf_video_processor(hf_and_ours, case):
    hf, ours = hf_and_ours[case]
    assert ours.grid == hf.grid
    np.testing.assert_allclose(ours.rows, hf.rows, rtol=0, atol=1e-6)
