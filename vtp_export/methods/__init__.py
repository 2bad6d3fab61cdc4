"""Pruning methods, one module each, registered in METHODS on import."""

from vtp_export.methods import (  # noqa: F401
    baselines, cdpruner, dart, divprune, evs, fastervlm, holov, none, prumerge, trim, visionzip, vispruner,
)
from vtp_export.methods.base import METHODS

__all__ = ["METHODS"]
