"""Data-independent baselines users compare against: `uniform` and `random`.

Their kept positions are fixed when the graph is exported (a constant Gather), so they cost nothing
at run time and show what a pruning method gains over not looking at the image at all.
"""

import math
from typing import Any

import torch
from torch import Tensor, nn

from vtp_export.methods import METHODS
from vtp_export.methods.base import MethodOption, PruningMethod, VisionFeatures
from vtp_export.methods.ops import gather_rows
from vtp_export.models.base import Geometry


class FixedPositions(PruningMethod):
    """Keeps a constant, ascending set of patch positions."""

    requires = frozenset()

    def __init__(self, geometry: Geometry, keep: int, **options: Any) -> None:
        super().__init__(geometry, keep, **options)
        self.register_buffer("kept", self.positions(), persistent=False)

    def positions(self) -> Tensor:
        raise NotImplementedError

    def select(self, features: VisionFeatures, projector: nn.Module) -> tuple[Tensor, Tensor]:
        kept = self.kept.unsqueeze(0).expand(features.hidden.shape[0], -1)
        return projector(gather_rows(features.patches, kept)), kept + 1


def uniform_grid(grid: int, keep: int) -> list[int]:
    """`keep` distinct raster positions spread evenly over a grid x grid patch map, ascending.

    A side x side lattice of cell centres (side = ceil(sqrt(keep))) covers the image evenly; `keep` of its
    side**2 points are taken at an even stride through the lattice. keep < grid**2 gives side <= grid, so
    the centres are distinct cells and the lattice, built row by row, is already in raster order.
    """
    side = math.ceil(math.sqrt(keep))
    centres = [int((i + 0.5) * grid / side) for i in range(side)]
    lattice = [row * grid + col for row in centres for col in centres]
    return [lattice[j * len(lattice) // keep] for j in range(keep)]


@METHODS.register("uniform")
class Uniform(FixedPositions):
    name = "uniform"
    summary = "baseline: patches on an even spatial lattice, independent of the image"
    reference = "baseline (no paper): even 2-D lattice subsample of the patch grid"

    def positions(self) -> Tensor:
        return torch.tensor(uniform_grid(self.geometry.grid, self.keep), dtype=torch.long)


@METHODS.register("random")
class Random(FixedPositions):
    name = "random"
    summary = "baseline: a seeded random set of patches, fixed per export"
    reference = "baseline (no paper): torch.randperm with a seeded generator"
    options = (MethodOption("seed", int, 0, "seed of the kept set"),)

    def positions(self) -> Tensor:
        generator = torch.Generator().manual_seed(self.settings["seed"])
        return torch.randperm(self.geometry.num_patches, generator=generator)[: self.keep].sort().values
