"""Data-independent baselines users compare against: `uniform` and `random`.

Their kept positions are fixed when the graph is exported (a constant Gather), so they cost nothing
at run time and show what a pruning method gains over not looking at the image at all.
"""

import math
from typing import Any

import torch
from torch import Tensor, nn

from vtp_export.contract import Geometry, Selection, Stream, VisionFeatures
from vtp_export.methods.base import METHODS, MethodOption, PruningMethod


class FixedPositions(PruningMethod):
    """Keeps a constant, ascending set of patch positions."""

    requires = frozenset()

    def __init__(self, geometry: Geometry, keep: int, **options: Any) -> None:
        super().__init__(geometry, keep, **options)
        self.register_buffer("kept", self.positions(), persistent=False)

    def positions(self) -> Tensor:
        raise NotImplementedError

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        kept = self.kept.unsqueeze(0).expand(features.hidden.shape[0], -1)
        return Selection(Stream.PATCHES, kept, kept + 1)


def uniform_grid(rows: int, cols: int, keep: int) -> list[int]:
    """`keep` distinct raster positions spread evenly over a rows x cols patch map, ascending.

    A lattice of cell centres, ceil(sqrt(keep * rows / cols)) rows by ceil(sqrt(keep * cols / rows)) columns
    (side x side with side = ceil(sqrt(keep)) on a square grid), covers the image evenly; `keep` of its points
    are taken at an even stride through the lattice. keep < rows * cols keeps the lattice within the grid, so
    the centres are distinct cells and the lattice, built row by row, is already in raster order.
    """
    lattice_rows = math.ceil(math.sqrt(keep * rows / cols))
    lattice_cols = math.ceil(math.sqrt(keep * cols / rows))
    centre_rows = [int((i + 0.5) * rows / lattice_rows) for i in range(lattice_rows)]
    centre_cols = [int((j + 0.5) * cols / lattice_cols) for j in range(lattice_cols)]
    lattice = [row * cols + col for row in centre_rows for col in centre_cols]
    return [lattice[j * len(lattice) // keep] for j in range(keep)]


@METHODS.register("uniform")
class Uniform(FixedPositions):
    name = "uniform"
    summary = "baseline: patches on an even spatial lattice, independent of the image"
    reference = "baseline (no paper): even 2-D lattice subsample of the patch grid (rows x cols)"

    def positions(self) -> Tensor:
        return torch.tensor(uniform_grid(self.geometry.grid_rows, self.geometry.grid_cols, self.keep), dtype=torch.long)


@METHODS.register("random")
class Random(FixedPositions):
    name = "random"
    summary = "baseline: a seeded random set of patches, fixed per export"
    reference = "baseline (no paper): torch.randperm with a seeded generator"
    options = (MethodOption("seed", int, 0, "seed of the kept set"),)

    def positions(self) -> Tensor:
        generator = torch.Generator().manual_seed(self.settings["seed"])
        return torch.randperm(self.geometry.num_patches, generator=generator)[: self.keep].sort().values
