"""Videos in: a video file (decoded with PyAV, the `[video]` extra), a list of frames (images, as `load_image` takes
them) or a VideoClip, sampled to the export's F frames with their times. The model's adapter turns the frames into
pixel values and the times into its prompt and positions (models/qwen2_5_vl.py).

Frames are sampled as HF's Qwen2-VL video processor samples `num_frames` (sample_frames: indices
int(i * total / F)); times are index / fps of the stream's average rate, and the sampled frame rate is
F / total * fps (transformers VideoMetadata.sampled_fps). Frames given as images carry no rate: they are taken as
consecutive frames at HF's default of 24 fps for pre-sampled frames.
"""

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vtp_export.errors import PipelineError
from vtp_export.util.images import ImageInput, load_image

DEFAULT_FPS = 24.0  # transformers' rate of frames given without metadata (VideoMetadata.sampled_fps, Qwen3VLProcessor)


@dataclass(frozen=True)
class VideoClip:
    frames: tuple[Image.Image, ...]  # RGB, the sampled frames in time order
    frame_times: tuple[float, ...]  # seconds of each frame in the source video
    sampled_fps: float  # frames per second of the sampled frames

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the frames."""
        return self.frames[0].height, self.frames[0].width


VideoInput = VideoClip | str | Path | list[ImageInput] | tuple[ImageInput, ...]


def sample_indices(total: int, frames: int) -> list[int]:
    """HF's sample_frames with num_frames: torch.arange(0, total, total / frames).int(), float32 as torch computes."""
    import numpy as np

    step = np.float32(total / frames)
    return [int(np.float32(i) * step) for i in range(frames)]


def load_video(video: VideoInput, frames: int) -> VideoClip:
    """The clip at `frames` frames: a file sampled evenly over its length, frames given as images taken as they are
    (exactly `frames` of them)."""
    if isinstance(video, VideoClip):
        clip = video
    elif isinstance(video, (str, Path)):
        return decode_video(Path(video), frames)
    elif isinstance(video, (list, tuple)):
        images = tuple(load_image(image) for image in video)
        clip = VideoClip(images, tuple(i / DEFAULT_FPS for i in range(len(images))), DEFAULT_FPS)
    else:
        raise PipelineError(f"unsupported video type {type(video).__name__} (a video file path, a list of frames or "
                            "a VideoClip)")
    if len(clip.frames) != frames:
        raise PipelineError(f"a video of {len(clip.frames)} frames was given; the export takes {frames} frames per "
                            "video (frames given as images are not resampled)")
    if len({frame.size for frame in clip.frames}) != 1:
        raise PipelineError("the frames of a video differ in size")
    return clip


def decode_video(path: Path, frames: int) -> VideoClip:
    """`frames` frames sampled evenly over the video file's length (PyAV)."""
    try:
        import av
    except ImportError:
        raise PipelineError("decoding video files needs PyAV: pip install 'vtp-export[video]' (or pass the frames "
                            "as images)") from None
    if not path.is_file():
        raise PipelineError(f"video {path} does not exist" if not path.exists() else f"video {path} is not a file")
    try:
        with av.open(str(path)) as container:  # count the frames: the sampled indices depend on the total
            if not container.streams.video:
                raise PipelineError(f"video {path} has no video stream")
            stream = container.streams.video[0]
            fps = float(stream.average_rate) if stream.average_rate else DEFAULT_FPS
            total = sum(1 for _ in container.decode(stream))
        if total < frames:
            raise PipelineError(f"video {path} has {total} frames; the export samples {frames} frames per video")
        indices = sample_indices(total, frames)
        with av.open(str(path)) as container:  # then convert only the sampled frames: memory stays F frames
            wanted, sampled = set(indices), []
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                if index in wanted:
                    sampled.append(frame.to_image().convert("RGB"))
                if index == indices[-1]:
                    break
    except PipelineError:
        raise
    except (av.FFmpegError, OSError, ValueError) as error:
        raise PipelineError(f"video {path} cannot be read: {error}") from None
    return VideoClip(tuple(sampled), tuple(i / fps for i in indices), frames / total * fps)
