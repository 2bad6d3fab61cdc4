"""The PyTorch modules the graphs were exported from, rebuilt from the weights config.json names: the
reference backend (and the pruning stage of profiles)."""

from pathlib import Path

from vtp_export.checkpoint.load import load_stack
from vtp_export.checkpoint.locate import read_model_config
from vtp_export.export.graph import VisionGraph
from vtp_export.export.verify import torch_outputs
from vtp_export.methods import METHODS
from vtp_export.models import MODELS
from vtp_export.onnx.names import TEXT_OUTPUTS
from vtp_export.records.export import ExportRecord
from vtp_export.towers.clip import ClipTextEncoder

Arrays = dict


class TorchBackend:
    name = "torch"
    device = "cpu"

    def __init__(self, folder: Path, record: ExportRecord) -> None:
        model = MODELS.get(record.model.name)
        config = read_model_config(model, record.model.weights)
        geometry = model.geometry(config, record.model.options)
        method = METHODS.get(record.method.name).for_signals(model.signals).from_record(geometry, record.keep,
                                                                                        record.method.options)
        stack = load_stack(model, config, record.model.options, record.model.weights, record.model.text_weights)
        self.modules = {"vision": VisionGraph(model, stack, method)}
        self.outputs = {"vision": self.modules["vision"].output_names}
        if method.text_conditioned:
            self.modules["text"], self.outputs["text"] = ClipTextEncoder(stack.clip), TEXT_OUTPUTS

    def run(self, role: str, feeds: Arrays) -> Arrays:
        return torch_outputs(self.modules[role], [feeds], self.outputs[role])[0]

    def close(self) -> None:
        self.modules.clear()
