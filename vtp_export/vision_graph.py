"""The exported vision graph: the model's feature extraction (tower up to its scoring layer), a pruning
method, the projector. See models/ for the towers' side and methods/ for the methods."""

from torch import Tensor, nn

from vtp_export.graph_io import TEXT_CONDITIONED_VISION_INPUTS, VISION_INPUTS
from vtp_export.methods.base import PruningMethod
from vtp_export.models.base import VisionLanguageModel, VisionStack


class VisionGraph(nn.Module):
    """pixel_values [, text_embeds] -> image_embeds (B, K, D_llm), token_index (B, K) [, num_valid (B,)]."""

    def __init__(self, model: VisionLanguageModel, stack: VisionStack, method: PruningMethod) -> None:
        super().__init__()
        self.features = model.feature_extractor(stack, method)
        self.projector = stack.projector
        self.method = method
        self.input_names = TEXT_CONDITIONED_VISION_INPUTS if method.text_conditioned else VISION_INPUTS
        self.output_names = method.output_names
        self.eval()

    def forward(self, pixel_values: Tensor, text_embeds: Tensor | None = None) -> tuple[Tensor, ...]:
        return self.method(self.features(pixel_values, text_embeds), self.projector)

    def from_scoring_input(self, x: Tensor, text_embeds: Tensor | None = None) -> tuple[Tensor, ...]:
        """forward() from the hidden states entering the tower's scoring layer (features.scoring_input)."""
        features = self.features.method_inputs(self.features.scoring_layer(x), text_embeds)
        return self.method(features, self.projector)
