"""Parity of an exported graph with the PyTorch module it came from, on seeded random inputs."""

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vtp_export.agreement import matched_rows, set_overlap
from vtp_export.errors import IndexMismatchError, ShapeMismatchError, ToleranceError
from vtp_export.graph_io import IMAGE_EMBEDS, TOKEN_INDEX
from vtp_export.onnxruntime_sessions import onnxruntime_session
from vtp_export.random_inputs import Arrays


@dataclass(frozen=True)
class Tolerance:
    """image_embeds pass when |onnx - torch| <= atol + rtol * |torch| everywhere."""

    atol: float = 1e-4
    rtol: float = 1e-3


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


def compare_with_onnxruntime(path: Path, inputs: list[Arrays], expected: list[Arrays],
                             tolerance: Tolerance = Tolerance(), exact_selection: bool = True) -> dict:
    """Run the graph on each sample; raise a VerificationError subclass on any disagreement with `expected`.

    Integer outputs must be identical; float outputs agree within `tolerance`. Where the method's selection
    is not exact across backends, token_index needs MIN_SET_OVERLAP and embeds are compared by source token.
    """
    session = onnxruntime_session(path, low_memory=True)
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
