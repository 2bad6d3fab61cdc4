"""The exported vision graph: the model's feature extraction (tower up to its scoring layer), a pruning
method's Selection, that selection applied to the model's token stream and projected, the model's token
layout. See models/ for the towers' side and methods/ for the methods."""

import torch
from torch import Tensor, nn

from vtp_export.contract import ClusterMerge, MeanOfRest, NeighbourMerge, Selection, Stream, VisionFeatures, VisionStack
from vtp_export.onnx.names import TEXT_CONDITIONED_VISION_INPUTS, VISION_INPUTS
from vtp_export.methods.base import PruningMethod
from vtp_export.models.base import VisionLanguageModel
from vtp_export.ops import gather_rows


def selected_rows(stream: Tensor, selection: Selection) -> Tensor:
    """The selection's tokens of one stream (B, L, C) before projection: the source rows, merged as it states."""
    merge, source = selection.merge, selection.source
    if merge is None:
        return stream if source is None else gather_rows(stream, source)
    if isinstance(merge, NeighbourMerge):
        weighted = stream * merge.weights.unsqueeze(-1).to(stream.dtype)
        merged = gather_rows(weighted, merge.neighbours).reshape(*source.shape, merge.count, -1).sum(dim=2)
        extra = gather_rows(weighted, merge.pruned).sum(dim=1, keepdim=True)
        return torch.cat([gather_rows(stream, source) + merged, extra], dim=1)
    if isinstance(merge, ClusterMerge):
        rest = gather_rows(stream, merge.remaining)
        merged = merge.assignment.transpose(1, 2).to(stream.dtype) @ rest[:, merge.members] / merge.counts
        return torch.cat([gather_rows(stream, source), rest[:, merge.targets] + merged], dim=1)
    assert isinstance(merge, MeanOfRest)
    rest = merge.rest.to(stream.dtype)
    mean = (stream * rest.unsqueeze(-1)).sum(dim=1, keepdim=True) / rest.sum(dim=1).view(stream.shape[0], 1, 1)
    table = torch.cat([gather_rows(stream, source), mean], dim=1)
    return gather_rows(table, merge.slot_rows)


class ApplySelection(nn.Module):
    """A Selection -> image_embeds of its slots (B, K, D_llm): the selected rows of the stream it indexes,
    projected (or gathered from the projections the method scored), unfilled slots zero. A module of its own
    so that its nodes carry a `selection` namespace, which reduced-precision graphs keep float32 like the
    method's (precision.float32_nodes), the projector excepted."""

    def __init__(self, projector: nn.Module) -> None:
        super().__init__()
        self.projector = projector

    def forward(self, selection: Selection, features: VisionFeatures) -> Tensor:
        if selection.stream is Stream.PROJECTED:
            assert selection.projected is not None and selection.merge is None
            projected = selection.projected
            embeds = (projected if selection.source is None else gather_rows(projected, selection.source))
            embeds = embeds.to(features.hidden.dtype)
        else:
            stream = features.hidden if selection.stream is Stream.SEQUENCE else features.patches
            embeds = self.projector(selected_rows(stream, selection))
        if selection.filled is not None:
            embeds = embeds * selection.filled.unsqueeze(-1).to(embeds.dtype)
        return embeds


class PruningStage(nn.Module):
    """VisionFeatures -> the graph's outputs: the method's Selection, applied to the token stream and projected,
    laid out by the model (image_embeds (B, K, D_llm), token_index (B, K) [, num_valid (B,)])."""

    def __init__(self, method: PruningMethod, projector: nn.Module, layout: nn.Module) -> None:
        super().__init__()
        self.method = method
        self.selection = ApplySelection(projector)
        self.layout = layout

    def forward(self, features: VisionFeatures) -> tuple[Tensor, ...]:
        selection = self.method(features, self.selection.projector)
        return self.layout(self.selection(selection, features), selection)


class VisionGraph(nn.Module):
    """pixel_values [, text_embeds] -> image_embeds (B, K, D_llm), token_index (B, K) [, num_valid (B,)]."""

    def __init__(self, model: VisionLanguageModel, stack: VisionStack, method: PruningMethod) -> None:
        super().__init__()
        self.features = model.feature_extractor(stack, method)
        self.prune = PruningStage(method, stack.projector, model.token_layout(stack.geometry))
        self.input_names = TEXT_CONDITIONED_VISION_INPUTS if method.text_conditioned else VISION_INPUTS
        self.output_names = method.output_names
        self.eval()

    @property
    def method(self) -> PruningMethod:
        return self.prune.method

    @property
    def projector(self) -> nn.Module:
        return self.prune.selection.projector

    def forward(self, pixel_values: Tensor, text_embeds: Tensor | None = None) -> tuple[Tensor, ...]:
        return self.prune(self.features(pixel_values, text_embeds))

    def from_scoring_input(self, x: Tensor, text_embeds: Tensor | None = None) -> tuple[Tensor, ...]:
        """forward() from the hidden states entering the tower's scoring layer (features.scoring_input)."""
        return self.prune(self.features.method_inputs(self.features.scoring_layer(x), text_embeds))
