"""How far the official CDPruner loop's float32 gains are off its float64 run, relative to max diag(L): the
measurement behind methods/cdpruner.py's EXHAUSTED_GAIN.

Runs the official greedy loop (incremental Cholesky, the diagonal downdated) in float32 and float64 on the
projected tokens of seeded random towers (llava15-tiny and the parity sweep's drawn shapes, random images and
questions) and prints, per image: the largest gain error over the steps where both runs picked alike, the
first step where the picks differ, and the best gain at the last step.

    .venv/bin/python tools/cdpruner_rounding.py [--shapes 4] [--images 2]
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.methods.sweep_towers import draw_shape, official_signals, sample_inputs, stack_of  # noqa: E402


def official_gains(projected, patch_embeds, text_embeds, keep: int, dtype) -> tuple[list[int], list[torch.Tensor]]:
    """The official loop's picks and its gains before each step."""
    unit = projected.to(dtype) / projected.to(dtype).norm(dim=-1, keepdim=True)
    image = patch_embeds.to(dtype) / patch_embeds.to(dtype).norm(dim=-1, keepdim=True)
    text = text_embeds.to(dtype) / text_embeds.to(dtype).norm()
    relevance = -(image @ text)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    kernel = relevance[:, None] * (unit @ unit.T) * relevance[None]
    rows = torch.zeros(keep, kernel.shape[0], dtype=dtype)
    gains, picks, history = torch.diagonal(kernel).clone(), [], []
    for i in range(keep):
        history.append(gains.clone())
        j = int(gains.argmax())
        picks.append(j)
        rows[i] = (kernel[j] - rows[:i, j] @ rows[:i]) / gains[j].sqrt()
        gains = gains - rows[i].square()
        gains[j] = -torch.inf
    return picks, history


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=int, default=4)
    parser.add_argument("--images", type=int, default=2)
    args = parser.parse_args()
    worst = 0.0
    for index in range(args.shapes):
        shape = draw_shape(index)
        stack = stack_of(shape)
        keep = min(stack.geometry.llm_width, stack.geometry.num_patches - 1)
        for image in range(args.images):
            pixel_values, text_embeds = sample_inputs(stack, seed=image)
            signals = official_signals(stack, pixel_values, text_embeds)
            with torch.no_grad():
                projected = stack.projector(signals.patches)[0]
            runs = [official_gains(projected, signals.clip_patch_embeds[0], signals.text_embeds[0], keep, dtype)
                    for dtype in (torch.float32, torch.float64)]
            (picks32, gains32), (picks64, gains64) = runs
            top = float(gains64[0].max())
            alike = next((i for i in range(keep) if picks32[i] != picks64[i]), keep)
            finite = [torch.isfinite(g) for g in gains64[:alike]]
            error = max(float((a.double() - b)[f].abs().max()) for a, b, f in zip(gains32, gains64, finite)) / top
            worst = max(worst, error)
            print(f"{shape} image {image}: keep {keep}, gain error {error:.2g} of max diag(L), picks alike for "
                  f"{alike} steps, best gain at the last step {float(gains64[-1].max()) / top:.2g}")
    print(f"largest float32 gain error: {worst:.2g} of max diag(L)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
