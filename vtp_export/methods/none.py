"""`none`: the unpruned baseline, all N patch tokens in raster order, exactly what LLaVA feeds its LLM."""

from torch import nn

from vtp_export.contract import Geometry, Selection, Stream, VisionFeatures
from vtp_export.errors import UsageError
from vtp_export.methods.base import METHODS, PruningMethod, patch_positions


@METHODS.register("none")
class NoPruning(PruningMethod):
    name = "none"
    summary = "baseline: all N patch tokens (LLaVA's own image features)"
    reference = "huggingface/transformers LlavaModel.get_image_features"
    projects_all_tokens = True
    requires = frozenset()

    @classmethod
    def output_tokens(cls, geometry: Geometry, keep: int | None) -> int:
        if keep not in (None, geometry.tokens_per_image):
            raise UsageError(f"method none keeps all {geometry.tokens_per_image} tokens: drop --keep or pass "
                             f"--keep {geometry.tokens_per_image}")
        return geometry.num_patches

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        patches = features.patches
        return Selection(Stream.PATCHES, None, patch_positions(patches.shape[0], patches.shape[1], patches.device))
