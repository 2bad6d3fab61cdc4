"""Parity of an exported graph with the PyTorch module it came from, on seeded random images."""

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vtp_export.errors import IndexMismatchError, ShapeMismatchError, ToleranceError
from vtp_export.graph_io import IMAGE_EMBEDS, PIXEL_VALUES, TOKEN_INDEX
from vtp_export.models import Geometry

# CLIP's image normalisation, as LLaVA's processor applies it.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Tolerance:
    """image_embeds pass when |onnx - torch| <= atol + rtol * |torch| everywhere."""

    atol: float = 1e-4
    rtol: float = 1e-3


def random_pixel_values(geometry: Geometry, batch: int, seed: int) -> torch.Tensor:
    """Images of uniform random colours in [0, 1], normalised like LLaVA's CLIP processor."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, geometry.image_size, geometry.image_size, generator=generator)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def onnxruntime_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()  # more threads than cores halves the speed
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


Outputs = dict[str, np.ndarray]


def torch_outputs(module: torch.nn.Module, inputs: list[torch.Tensor]) -> list[Outputs]:
    """The module's outputs on each input, computed before export so the weights can be freed after."""
    with torch.no_grad():
        return [{name: t.numpy() for name, t in zip((IMAGE_EMBEDS, TOKEN_INDEX), module(x))} for x in inputs]


def verification_inputs(geometry: Geometry, batch: int, samples: int, seed: int) -> list[torch.Tensor]:
    return [random_pixel_values(geometry, batch, seed + i) for i in range(samples)]


def compare_with_onnxruntime(path: Path, inputs: list[torch.Tensor], expected: list[Outputs],
                             tolerance: Tolerance = Tolerance()) -> dict:
    """Run the graph on each input; raise a VerificationError subclass on any disagreement with `expected`."""
    session = onnxruntime_session(path)
    output_names = [o.name for o in session.get_outputs()]
    worst_error = largest = 0.0
    for sample, (pixel_values, want_all) in enumerate(zip(inputs, expected)):
        got = dict(zip(output_names, session.run(None, {PIXEL_VALUES: pixel_values.numpy()})))
        for name, want in want_all.items():
            have = got[name]
            if have.shape != want.shape or have.dtype != want.dtype:
                raise ShapeMismatchError(
                    f"sample {sample}: {name} is {have.dtype}{list(have.shape)} in ONNX, "
                    f"{want.dtype}{list(want.shape)} in PyTorch"
                )
        differing = int((got[TOKEN_INDEX] != want_all[TOKEN_INDEX]).sum())
        if differing:
            raise IndexMismatchError(
                f"sample {sample}: token_index differs from PyTorch in {differing} of {want_all[TOKEN_INDEX].size} slots"
            )
        reference = want_all[IMAGE_EMBEDS].astype(np.float64)
        error = np.abs(got[IMAGE_EMBEDS] - reference)
        worst_error = max(worst_error, float(error.max(initial=0.0)))
        largest = max(largest, float(np.abs(reference).max(initial=0.0)))
        if (error > tolerance.atol + tolerance.rtol * np.abs(reference)).any():
            raise ToleranceError(
                f"sample {sample}: image_embeds differ from PyTorch by up to {error.max():.3g} "
                f"(tolerance atol={tolerance.atol:g}, rtol={tolerance.rtol:g})"
            )
    return {
        "backend": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "samples": len(inputs),
        "batch": int(inputs[0].shape[0]),
        "token_index": "identical",
        "image_embeds_max_abs_diff": worst_error,
        "image_embeds_max_abs": largest,
        "tolerance": asdict(tolerance),
        "passed": True,
    }
