"""Parity of an exported graph with the PyTorch module it came from, on seeded random inputs."""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort
import torch

from vtp_export.errors import IndexMismatchError, ShapeMismatchError, ToleranceError
from vtp_export.onnx.inputs import Arrays
from vtp_export.onnx.names import DEEPSTACK_EMBEDS, IMAGE_EMBEDS, TOKEN_INDEX
from vtp_export.onnx.sessions import onnxruntime_session
from vtp_export.precision.agreement import matched_rows, set_overlap
from vtp_export.records.export import Verification

if TYPE_CHECKING:
    from vtp_export.export.graph import VisionGraph


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


# The screen below moves the hidden states entering the tower's scoring layer, and the output of every linear
# layer and convolution after them, by this relative size (times each row's RMS): where two backends' float32
# towers differ by rounding. 10x what onnxruntime's tower outputs were measured to differ from PyTorch's (1e-6 of
# the hidden states' RMS after 4-5 layers on the tiny models and a peaked 224-px checkpoint); the scoring
# layer's attention logits then move as they do between backends, more in towers with peaked attention.
GEMM_NOISE = 1e-5
SCREEN_PROBES = 2  # antithetic pairs
CANDIDATES_PER_SAMPLE = 3  # random samples drawn per verification sample asked for


def with_noise(x: torch.Tensor, noise: torch.Tensor, sign: float) -> torch.Tensor:
    return x + noise * (sign * GEMM_NOISE) * x.square().mean(dim=-1, keepdim=True).sqrt()


@contextmanager
def gemm_noise(module: torch.nn.Module, noises: list[torch.Tensor], generator: torch.Generator,
               sign: float) -> Iterator[None]:
    """Every Linear/Conv output of `module` moved by with_noise; the draws go to `noises` on the first run and
    are replayed from it (with the other sign) on the second."""
    replay = bool(noises)
    calls = iter(range(len(noises) if replay else 1 << 62))

    def add_noise(_module, _inputs, output):
        i = next(calls)
        if not replay:
            noises.append(torch.randn(output.shape, generator=generator, dtype=output.dtype))
        return with_noise(output, noises[i], sign)

    handles = [m.register_forward_hook(add_noise) for m in module.modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d))]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def same_outputs(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], tolerance: Tolerance) -> bool:
    for x, y in zip(a, b):
        if not x.is_floating_point():
            if not torch.equal(x, y):
                return False
        elif ((x.double() - y.double()).abs() > tolerance.atol + tolerance.rtol * y.double().abs()).any():
            return False
    return True


def stays_put(graph: "VisionGraph", x: torch.Tensor, text: list[torch.Tensor], outputs: tuple[torch.Tensor, ...],
              generator: torch.Generator, tolerance: Tolerance) -> bool:
    """Whether the vision graph's outputs from `x` (features.scoring_input) stay within `tolerance`, indices
    identical, under the screen's noise (the tower before the scoring layer runs once)."""
    for _ in range(SCREEN_PROBES):
        noises: list[torch.Tensor] = []
        start = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        for sign in (1.0, -1.0):
            with gemm_noise(graph, noises, generator, sign):
                moved = graph.from_scoring_input(with_noise(x, start, sign), *text)
            if not same_outputs(outputs, moved, tolerance):
                return False
    return True


@dataclass
class References:
    """Verification samples with the module's outputs, and for each whether its selection must be identical
    (False: compared by kept-set overlap, as methods whose selection is chaotic by design)."""

    inputs: list[Arrays]
    expected: list[Arrays]
    exact: list[bool]
    passed_over: int = 0  # candidates not used: their selection sits within float32 rounding of a tie


def determined_references(graph: "VisionGraph", candidates: list[Arrays], count: int,
                          tolerance: Tolerance = Tolerance(), seed: int = 0) -> References:
    """The first `count` candidates on which the vision graph's selection is determined by the data, with the
    module's outputs on them.

    A pruning method's outputs jump where two of its scores tie (a kept token's rank, a nearest neighbour,
    a greedy pick): there two correct float32 implementations pick differently, and no graph can agree with
    PyTorch to any tolerance. A candidate counts as determined when the outputs stay within `tolerance` with
    every index identical under noise of 10x the measured backend difference from the tower's scoring layer on
    (GEMM_NOISE; SCREEN_PROBES antithetic pairs: whichever way two near-tied scores lie, one draw of a pair
    moves them past each other); the rest are passed over, so exact comparison runs where it means something.
    Where the candidates run out first (a method and keep whose every selection has near ties, e.g.
    PruMerge's attention order at keep ~ N), the remaining slots take passed-over candidates, compared by
    kept-set overlap. Methods verified by set overlap anyway (exact_selection False) take the first `count`."""
    generator = torch.Generator().manual_seed(seed)
    references = References([], [], [])
    undetermined: list[tuple[Arrays, Arrays]] = []
    with torch.no_grad():
        for sample in candidates:
            pixel_values, *text = [torch.from_numpy(a) for a in sample.values()]
            x = graph.features.scoring_input(pixel_values)
            outputs = graph.from_scoring_input(x, *text)
            named = {name: t.numpy() for name, t in zip(graph.output_names, outputs)}
            if graph.method.exact_selection and not stays_put(graph, x, text, outputs, generator, tolerance):
                undetermined.append((sample, named))
                continue
            references.inputs.append(sample)
            references.expected.append(named)
            references.exact.append(graph.method.exact_selection)
            if len(references.inputs) == count:
                break
    references.passed_over = len(undetermined)
    for sample, named in undetermined[:count - len(references.inputs)]:
        references.inputs.append(sample)
        references.expected.append(named)
        references.exact.append(False)
        references.passed_over -= 1
    return references


def compare_with_onnxruntime(path: Path, inputs: list[Arrays], expected: list[Arrays],
                             tolerance: Tolerance = Tolerance(), exact: list[bool] | None = None) -> Verification:
    """Run the graph on each sample; raise a VerificationError subclass on any disagreement with `expected`.

    Integer outputs must be identical; float outputs agree within `tolerance`. On samples whose selection is
    not exact across backends (`exact`, default all exact), token_index needs MIN_SET_OVERLAP and embeds (image and
    DeepStack) are compared by source token.
    """
    exact = exact if exact is not None else [True] * len(inputs)
    session = onnxruntime_session(path, low_memory=True)
    output_names = [o.name for o in session.get_outputs()]
    worst: dict[str, float] = {}
    largest: dict[str, float] = {}
    overlap = 1.0
    for sample, (feeds, want_all, exact_selection) in enumerate(zip(inputs, expected, exact)):
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
            rows = matched_rows(got[TOKEN_INDEX], want_all[TOKEN_INDEX])
            pairs = {IMAGE_EMBEDS: rows, DEEPSTACK_EMBEDS: rows}
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
                if name == DEEPSTACK_EMBEDS:  # (B, levels, K, D): the slot axis next to the batch's
                    have, want = np.moveaxis(have, 2, 1), np.moveaxis(want, 2, 1)
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
    selection = None
    if TOKEN_INDEX in expected[0]:
        identical = sum(exact)
        selection = ("identical" if identical == len(exact) else
                     f"set overlap >= {overlap:.3f}" if not identical else
                     f"identical on {identical}, set overlap >= {overlap:.3f} on {len(exact) - identical} near-tied")
    return Verification(backend=f"onnxruntime {ort.__version__} CPUExecutionProvider", samples=len(inputs),
                        batch=int(next(iter(inputs[0].values())).shape[0]), max_abs_diff=worst, max_abs=largest,
                        tolerance=asdict(tolerance), passed=True, selection=selection)
