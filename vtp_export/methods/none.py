"""`none`: the unpruned baseline, all N patch tokens in raster order, exactly what LLaVA feeds its LLM."""

from torch import Tensor, nn

from vtp_export.errors import UsageError
from vtp_export.methods import METHODS
from vtp_export.methods.base import PruningMethod, VisionFeatures, patch_positions
from vtp_export.models.base import Geometry


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

    def select(self, features: VisionFeatures, projector: nn.Module) -> tuple[Tensor, Tensor]:
        patches = features.patches
        return projector(patches), patch_positions(patches.shape[0], patches.shape[1], patches.device)
