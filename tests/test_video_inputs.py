"""Video input's bad cases, each one line and nothing half-written: an odd --frames, a keep that is not a multiple of
the temporal groups, evs below the first group or on still images, a clip with fewer frames than the export's, an
unreadable video, frames given as images in the wrong number; how frames are sampled and timed; and how the export
states a video's keep."""

import av
import numpy as np
import pytest
from PIL import Image

from vtp_export.cli import main
from vtp_export.errors import PipelineError
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.util.video import DEFAULT_FPS, load_video, sample_indices

QWEN = ["--model", "qwen2.5-vl-tiny", "--target", "cpu", "--image-size", "224x336"]


def write_video(path, frames: int, fps: int = 4, size=(64, 48)) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            picture = np.full((size[1], size[0], 3), 20 * i, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())


def one_line_error(capsys, code: int, message: str) -> None:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("vtp-export: error: "), captured.err
    assert message in lines[0] and "Traceback" not in captured.err + captured.out


@pytest.mark.parametrize("args,message", [
    (["--method", "none", "--frames", "3"], "--frames 3: the tower's temporal patch is 2 frames, so F must be even: "
                                            "use 2 or 4"),
    (["--method", "none", "--frames", "many"], "--frames 'many': expected an even number of frames"),
    (["--method", "divprune", "--frames", "6", "--keep", "50"],
     "--keep 50 is not a multiple of the 3 temporal groups divprune splits it over (top-k per group): use 48 or 51"),
    (["--method", "evs", "--frames", "4", "--keep", "90"], "use 96..191"),
    (["--method", "evs", "--keep", "90"], "export with --frames F"),
])
def test_bad_video_exports_are_refused_in_one_line(args, message, tmp_path, capsys):
    out = tmp_path / "out"
    one_line_error(capsys, main([*QWEN, *args, "--out", str(out)]), message)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_evs_is_refused_on_models_without_temporal_groups(tmp_path, capsys):
    code = main(["--model", "llava15-tiny", "--target", "cpu", "--method", "evs", "--keep", "64", "--out",
                 str(tmp_path / "out")])
    one_line_error(capsys, code, "method evs needs a video's temporal groups (--frames), which llava15-tiny does not")


def test_frames_are_sampled_and_timed_as_hf_samples_them(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, 10, fps=5)
    clip = load_video(path, 4)
    assert sample_indices(10, 4) == [0, 2, 5, 7]  # int(i * 2.5)
    assert clip.frame_times == (0.0, 0.4, 1.0, 1.4) and clip.sampled_fps == pytest.approx(2.0)
    assert len(clip.frames) == 4 and clip.size == (48, 64) and clip.frames[0].mode == "RGB"
    frames = [Image.new("RGB", (32, 32), (i, i, i)) for i in range(4)]
    given = load_video(frames, 4)
    assert given.frame_times == tuple(i / DEFAULT_FPS for i in range(4)) and given.sampled_fps == DEFAULT_FPS


def test_bad_videos_are_one_line(tmp_path):
    short, garbage, missing = tmp_path / "short.mp4", tmp_path / "garbage.mp4", tmp_path / "missing.mp4"
    write_video(short, 3)
    garbage.write_bytes(b"not a video at all" * 100)
    cases = {
        short: "video {} has 3 frames; the export samples 4 frames per video",
        garbage: "video {} cannot be read",
        missing: "video {} does not exist",
    }
    for path, message in cases.items():
        with pytest.raises(PipelineError) as error:
            load_video(path, 4)
        assert str(error.value).startswith(message.format(path)) and "\n" not in str(error.value)
    with pytest.raises(PipelineError, match="a video of 3 frames was given; the export takes 4 frames per video"):
        load_video([Image.new("RGB", (32, 32))] * 3, 4)
    with pytest.raises(PipelineError, match="the frames of a video differ in size"):
        load_video([Image.new("RGB", (32, 32))] * 3 + [Image.new("RGB", (16, 32))], 4)


@pytest.mark.parametrize("model,options,method,keep,summary", [
    ("qwen2.5-vl-tiny", {"frames": "4"}, "divprune", 64, "keep=64 (32 in each of the 2 temporal groups)"),
    ("qwen2.5-vl-tiny", {"frames": "4"}, "none", None, "keep=512 (256 in each of the 2 temporal groups)"),
    ("qwen2.5-vl-tiny", {"frames": "4"}, "evs", 320, "keep=320"),
    ("qwen2.5-vl-tiny", {}, "divprune", 64, "keep=64"),
    ("llava-next-tiny", {}, "divprune", 320, "keep=320 (64 in each of the 5 crops)"),
])
def test_the_export_states_keep_per_video_and_per_group(model, options, method, keep, summary):
    adapter = MODELS.get(model)
    geometry = adapter.geometry(adapter.default_config(), adapter.resolved_options(options))
    assert METHODS.get(method).create(geometry, keep, {}).keep_summary == summary
