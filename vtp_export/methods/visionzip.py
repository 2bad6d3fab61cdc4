"""VisionZip: dominant tokens by [CLS] attention plus contextual tokens merged by key similarity.

Reference: dvlab-research/VisionZip @3151f6d, visionzip/clip_encoder.py, and visionzip/llava_arch.py for
LLaVA-NeXT (methods-spec.md, "VisionZip"). Parity: tests/methods/test_parity.py::test_visionzip,
tests/methods/test_parity_next.py::test_visionzip. On LLaVA-NeXT each crop keeps K / crops tokens, split
by the LLaVA-1.5 rule (the repository has no NeXT split; its authors apply VisionZip to each crop).
"""

from typing import Any

import torch
from torch import Tensor, nn

from vtp_export.contract import ClusterMerge, Geometry, Selection, Stream, VisionFeatures
from vtp_export.errors import UsageError
from vtp_export.methods.base import METHODS, MethodOption, PruningMethod
from vtp_export.ops import complement_ascending, gather_rows, sorted_ascending, top_indices


def default_contextual(keep: int) -> int:
    """The paper's LLaVA-1.5 split: 64 = 54 + 10, 128 = 108 + 20, 192 = 162 + 30."""
    return round(keep * 10 / 64)


@METHODS.register("visionzip")
class VisionZip(PruningMethod):
    name = "visionzip"
    summary = "dominant tokens by CLS attention (CLS kept) + contextual tokens merged by key similarity"
    reference = "dvlab-research/VisionZip@3151f6d visionzip/clip_encoder.py"
    unsupported_reason = "its released code keeps CLS and merges by the feature layer's keys; the authors' Qwen2.5-VL " \
                         "form is not public"
    options = (
        MethodOption("dominant", int, None, "dominant tokens incl. CLS; default keep - contextual"),
        MethodOption("contextual", int, None, "merged contextual tokens; default round(keep*10/64)"),
    )

    def __init__(self, geometry: Geometry, keep: int, **options: Any) -> None:
        super().__init__(geometry, keep, **options)
        dominant, contextual = self.settings["dominant"], self.settings["contextual"]
        if dominant is None and contextual is None:
            contextual = default_contextual(keep)
        if dominant is None:
            dominant = keep - contextual
        if contextual is None:
            contextual = keep - dominant
        if dominant + contextual != keep or dominant < 1 or contextual < 0:
            raise UsageError(
                f"method visionzip: dominant={dominant} + contextual={contextual} must equal --keep {keep}, "
                "with dominant >= 1 (it holds CLS) and contextual >= 0"
            )
        self.settings = {"dominant": dominant, "contextual": contextual}
        self.dominant, self.contextual = dominant, contextual
        remaining = geometry.sequence_length - dominant
        step = max(1, remaining // contextual) if contextual else 1
        targets = list(range(0, remaining, step))[:contextual]
        members = [i for i in range(remaining) if i not in set(targets)]
        self.register_buffer("targets", torch.tensor(targets, dtype=torch.long), persistent=False)
        self.register_buffer("members", torch.tensor(members, dtype=torch.long), persistent=False)

    def slot_groups(self) -> Tensor:
        """The official LLaVA-NeXT layout (visionzip/llava_arch.py restore_image_features_sorted): the tiles'
        dominant patches in full-grid raster order, then the tiles' CLS tokens, then their contextual tokens."""
        groups = torch.zeros(self.keep)
        groups[0] = 1
        groups[self.dominant:] = 2
        return groups

    def forward(self, features: VisionFeatures, projector: nn.Module) -> Selection:
        hidden = features.hidden
        batch = hidden.shape[0]
        scores = features.cls_attention[:, :, 1:].sum(dim=1)
        cls = torch.zeros(batch, 1, dtype=torch.long, device=hidden.device)
        dominant = torch.cat([cls, sorted_ascending(top_indices(scores, self.dominant - 1) + 1)], dim=1)
        if not self.contextual:
            return Selection(Stream.SEQUENCE, dominant, dominant, slot_groups=self.slot_groups())
        remaining = complement_ascending(dominant, hidden.shape[1])
        keys = gather_rows(features.keys.mean(dim=1), remaining)
        keys = keys / keys.norm(dim=-1, keepdim=True)
        similarity = keys[:, self.members] @ keys[:, self.targets].transpose(1, 2)
        assignment = similarity.argmax(dim=-1, keepdim=True)
        one_hot = (assignment == torch.arange(self.contextual, device=hidden.device)).to(hidden.dtype)
        counts = one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)
        index = torch.cat([dominant, remaining[:, self.targets]], dim=1)
        merge = ClusterMerge(remaining, self.targets, self.members, one_hot, counts)
        return Selection(Stream.SEQUENCE, dominant, index, merge=merge, slot_groups=self.slot_groups())
