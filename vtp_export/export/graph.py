"""The exported vision graph: the model's feature extraction (tower up to its scoring layer), a pruning
method's Selection, that selection applied to the model's token streams (and feature levels) and projected, the
model's token layout. See models/ for the towers' side and methods/ for the methods."""

import torch
from torch import Tensor, nn

from vtp_export.contract import ClusterMerge, MeanOfRest, NeighbourMerge, Selection, Stream, VisionFeatures, VisionStack
from vtp_export.methods.base import PruningMethod
from vtp_export.models.base import VisionLanguageModel
from vtp_export.onnx.names import DEEPSTACK_EMBEDS, TEXT_CONDITIONED_VISION_INPUTS, VISION_INPUTS, VISION_OUTPUTS
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
    projected (or gathered from the projections the method scored), unfilled slots zero; and where the tower
    has feature levels (Qwen3-VL's DeepStack) the same rows of every level, each projected by its own merger
    (B, levels, K, D_llm). A module of its own so that its nodes carry a `selection` namespace, which
    reduced-precision graphs keep float32 like the method's (precision.float32_nodes), the projectors excepted."""

    def __init__(self, projector: nn.Module, level_projectors: tuple[nn.Module, ...] = ()) -> None:
        super().__init__()
        self.projector = projector
        self.levels = nn.ModuleList(LevelProjection(p) for p in level_projectors)

    def forward(self, selection: Selection, features: VisionFeatures) -> tuple[Tensor, Tensor | None]:
        if selection.stream is Stream.PROJECTED:
            assert selection.projected is not None and selection.merge is None
            projected = selection.projected
            embeds = (projected if selection.source is None else gather_rows(projected, selection.source))
            embeds = embeds.to(features.hidden.dtype)
        else:
            stream = features.hidden if selection.stream is Stream.SEQUENCE else features.patches
            embeds = self.projector(selected_rows(stream, selection))
        embeds = unfilled_zero(embeds, selection)
        if not self.levels:
            return embeds, None
        assert len(features.levels) == len(self.levels)
        levels = [level(selection, hidden, features) for level, hidden in zip(self.levels, features.levels)]
        return embeds, torch.stack(levels, dim=1)


def unfilled_zero(embeds: Tensor, selection: Selection) -> Tensor:
    """(B, K, D) projected slots with the unfilled ones (Selection.filled) set to zero."""
    if selection.filled is None:
        return embeds
    return embeds * selection.filled.unsqueeze(-1).to(embeds.dtype)


class LevelProjection(nn.Module):
    """One feature level through a Selection: the rows the selection takes of the main stream, from the level's
    stream of the same layout (a PROJECTED selection's `source` rows of the level's patches, which it projects
    itself; a per-image selection's rows of the image's sequence of them), projected by the level's merger,
    unfilled slots zero."""

    def __init__(self, projector: nn.Module) -> None:
        super().__init__()
        self.projector = projector

    def forward(self, selection: Selection, hidden: Tensor, features: VisionFeatures) -> Tensor:
        stream = hidden if selection.stream is Stream.SEQUENCE or not features.cls_token else hidden[:, 1:]
        if selection.per_image:
            images = selection.token_index.shape[0]
            stream = stream.reshape(images, -1, stream.shape[-1])[:, features.image_sequence]
        return unfilled_zero(self.projector(selected_rows(stream, selection)), selection)


class PruningStage(nn.Module):
    """VisionFeatures -> the graph's outputs: the method's Selection, applied to the token stream and projected,
    laid out by the model (image_embeds (B, K, D_llm), token_index (B, K) [, num_valid (B,)]), then for towers
    with feature levels deepstack_embeds (B, levels, K, D_llm) in the same slot order (the layout arranges them as
    it arranges the embeddings: one crop, or a video's temporal groups)."""

    def __init__(self, method: PruningMethod, projector: nn.Module, layout: nn.Module,
                 level_projectors: tuple[nn.Module, ...] = ()) -> None:
        super().__init__()
        self.method = method
        self.selection = ApplySelection(projector, level_projectors)
        self.layout = layout

    def forward(self, features: VisionFeatures) -> tuple[Tensor, ...]:
        selection = self.method(features, self.selection.projector)
        embeds, levels = self.selection(selection, features)
        outputs = self.layout(embeds, selection)
        return outputs if levels is None else (*outputs, self.layout.levels(levels, selection))


class VisionGraph(nn.Module):
    """pixel_values [, text_embeds] -> image_embeds (B, K, D_llm), token_index (B, K) [, num_valid (B,)]
    [, deepstack_embeds (B, levels, K, D_llm)]."""

    def __init__(self, model: VisionLanguageModel, stack: VisionStack, method: PruningMethod) -> None:
        super().__init__()
        levels = model.level_projectors(stack)
        laid_out = stack.geometry.crops == 1 or stack.geometry.frames  # one crop, or a video's groups
        if levels and (not laid_out or method.output_names != VISION_OUTPUTS):
            raise ValueError("feature levels are laid out for one crop or a video's groups and a fixed token count")
        self.features = model.feature_extractor(stack, method)
        self.prune = PruningStage(method, stack.projector, model.token_layout(stack.geometry), levels)
        self.input_names = TEXT_CONDITIONED_VISION_INPUTS if method.takes_text_embeds else VISION_INPUTS
        self.output_names = (*method.output_names, DEEPSTACK_EMBEDS) if levels else method.output_names
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
