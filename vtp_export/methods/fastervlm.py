"""FasterVLM: the top-k patches by [CLS] attention of the feature layer (mean over heads), raster order.

Reference: Theia-4869/FasterVLM@f5d5f12 (methods-spec.md, "FasterVLM").
Parity: tests/methods/test_parity.py::test_fastervlm.
"""

from torch import nn

from vtp_export.contract import Selection, Signal, Stream, VisionFeatures
from vtp_export.methods.base import METHODS, PruningMethod
from vtp_export.ops import sorted_ascending, top_indices


@METHODS.register("fastervlm")
class FasterVLM(PruningMethod):
    name = "fastervlm"
    summary = "top-k patches by CLS attention of the feature layer, kept in raster order, no merging"
    reference = "Theia-4869/FasterVLM@f5d5f12"
    requires = frozenset({Signal.CLS_ATTENTION})
    unsupported_reason = "FasterVLM is the CLS token's ranking; ranked by received attention it is another method"

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        kept = sorted_ascending(top_indices(features.patch_attention(), self.keep))
        return Selection(Stream.PATCHES, kept, kept + 1)
