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


def onnxruntime_session(path: Path, threads: int | None = None,
                        providers: list[str] | None = None) -> ort.InferenceSession:
    """A session with explicit CPU threads; `providers` ahead of the CPU provider where given (CUDA)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()  # more threads than cores halves the speed
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=[*(providers or []), "CPUExecutionProvider"])


Arrays = dict[str, np.ndarray]  # one sample's graph inputs or outputs by name
# Chaotic methods (exact_selection = False) must share at least this share of each image's kept set.
MIN_SET_OVERLAP = 0.5


def torch_outputs(module: torch.nn.Module, inputs: list[Arrays], output_names: tuple[str, ...]) -> list[Arrays]:
    """The module's outputs on each sample, computed before export so the weights can be freed after."""
    results = []
    with torch.no_grad():
        for sample in inputs:
            outputs = module(*(torch.from_numpy(a) for a in sample.values()))
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            results.append({name: t.numpy() for name, t in zip(output_names, outputs)})
    return results


def verification_inputs(geometry: Geometry, batch: int, samples: int, seed: int) -> list[Arrays]:
    return [{PIXEL_VALUES: random_pixel_values(geometry, batch, seed + i).numpy()} for i in range(samples)]


def random_input_ids(batch: int, length: int, vocab: int, seed: int) -> np.ndarray:
    """Ids laid out like CLIP's tokenizer output padded to `length`: BOS, random text, EOS, EOS padding.

    CLIP's vocabulary ends with <|startoftext|>, <|endoftext|>.
    """
    generator = np.random.default_rng(seed)
    bos, eos = vocab - 2, vocab - 1
    ids = np.full((batch, length), eos, dtype=np.int64)
    for row in ids:
        end = int(generator.integers(2, length))
        row[0] = bos
        row[1:end] = generator.integers(0, bos, end - 1)
    return ids


def set_overlap(got: np.ndarray, want: np.ndarray) -> float:
    """Smallest per-row share of want's real source tokens that got also kept."""
    shares = []
    for have, expected in zip(got, want):
        real = set(expected[expected >= 0].tolist())
        shares.append(len(real & set(have.tolist())) / len(real) if real else 1.0)
    return min(shares)


def matched_rows(got_index: np.ndarray, want_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, slot) pairs of got and of want holding the same source token, for comparing embeds by source."""
    got_at, want_at = [], []
    for b, (have, expected) in enumerate(zip(got_index, want_index)):
        slot_of = {int(t): j for j, t in enumerate(expected) if t >= 0}
        for i, t in enumerate(have):
            if int(t) in slot_of:
                got_at.append((b, i))
                want_at.append((b, slot_of[int(t)]))
    return tuple(np.array(got_at).T), tuple(np.array(want_at).T)


def compare_with_onnxruntime(path: Path, inputs: list[Arrays], expected: list[Arrays],
                             tolerance: Tolerance = Tolerance(), exact_selection: bool = True) -> dict:
    """Run the graph on each sample; raise a VerificationError subclass on any disagreement with `expected`.

    Integer outputs must be identical; float outputs agree within `tolerance`. Where the method's selection
    is not exact across backends, token_index needs MIN_SET_OVERLAP and embeds are compared by source token.
    """
    session = onnxruntime_session(path)
    output_names = [o.name for o in session.get_outputs()]
    worst: dict[str, float] = {}
    largest: dict[str, float] = {}
    overlap = 1.0
    for sample, (feeds, want_all) in enumerate(zip(inputs, expected)):
        got = dict(zip(output_names, session.run(None, feeds)))
        for name, want in want_all.items():
            have = got[name]
            if have.shape != want.shape or have.dtype != want.dtype:
                raise ShapeMismatchError(
                    f"sample {sample}: {name} is {have.dtype}{list(have.shape)} in ONNX, "
                    f"{want.dtype}{list(want.shape)} in PyTorch"
                )
        pairs = {}
        if not exact_selection and TOKEN_INDEX in want_all:
            overlap = min(overlap, set_overlap(got[TOKEN_INDEX], want_all[TOKEN_INDEX]))
            if overlap < MIN_SET_OVERLAP:
                raise IndexMismatchError(f"sample {sample}: token_index shares only {overlap:.0%} of PyTorch's kept "
                                         f"set (at least {MIN_SET_OVERLAP:.0%} expected)")
            pairs = {IMAGE_EMBEDS: matched_rows(got[TOKEN_INDEX], want_all[TOKEN_INDEX])}
        for name, want in want_all.items():
            have = got[name]
            if not np.issubdtype(want.dtype, np.floating):
                if (exact_selection or name != TOKEN_INDEX) and (differing := int((have != want).sum())):
                    raise IndexMismatchError(
                        f"sample {sample}: {name} differs from PyTorch in {differing} of {want.size} entries"
                    )
                continue
            if name in pairs:
                (have_at, want_at) = pairs[name]
                have, want = have[have_at], want[want_at]
            reference = want.astype(np.float64)
            error = np.abs(have - reference)
            worst[name] = max(worst.get(name, 0.0), float(error.max(initial=0.0)))
            largest[name] = max(largest.get(name, 0.0), float(np.abs(reference).max(initial=0.0)))
            if (error > tolerance.atol + tolerance.rtol * np.abs(reference)).any():
                raise ToleranceError(
                    f"sample {sample}: {name} differs from PyTorch by up to {error.max():.3g} "
                    f"(tolerance atol={tolerance.atol:g}, rtol={tolerance.rtol:g})"
                )
    record = {
        "backend": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "samples": len(inputs),
        "batch": int(next(iter(inputs[0].values())).shape[0]),
        "max_abs_diff": worst,
        "max_abs": largest,
        "tolerance": asdict(tolerance),
        "passed": True,
    }
    if TOKEN_INDEX in expected[0]:
        record["selection"] = "identical" if exact_selection else f"set overlap >= {overlap:.3f}"
    return record
