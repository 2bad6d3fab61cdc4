"""Vision (and text) graph backends: onnxruntime, a TensorRT engine, or the PyTorch module (reference).

Each maps graph input names to graph output names, exactly as the exported graphs define them.
"""

from pathlib import Path

import numpy as np

from vtp_export.builder import ENGINE_FOLDER
from vtp_export.checkpoint import read_llava_config
from vtp_export.encoder import ClipTextEncoder, PrunedVisionEncoder
from vtp_export.engine import EngineMismatchError, check_engine_matches, read_engine_record, this_device
from vtp_export.errors import PipelineError
from vtp_export.exporter import load_stack
from vtp_export.graph_io import CONFIG_JSON, TEXT_OUTPUTS
from vtp_export.methods import METHODS
from vtp_export.models import MODELS, geometry_of
from vtp_export.recipe import engine_name
from vtp_export.verify import onnxruntime_session, torch_outputs

Arrays = dict[str, np.ndarray]
BACKENDS = ("onnxruntime", "tensorrt", "torch")


def recorded_folder(source: str) -> Path | None:
    """A weights source as config.json records it: a folder, or None for random weights."""
    return None if source.startswith("random(") else Path(source)


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, folder: Path, record: dict) -> None:
        providers = [p for p in ("CUDAExecutionProvider",) if p in onnxruntime_providers()]
        self.sessions = {role: onnxruntime_session(folder / graph["file"], providers=providers or None)
                         for role, graph in record["graphs"].items()}
        self.device = "cuda" if providers else "cpu"

    def run(self, role: str, feeds: Arrays) -> Arrays:
        session = self.sessions[role]
        return dict(zip((o.name for o in session.get_outputs()), session.run(None, feeds)))


def onnxruntime_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, folder: Path, record: dict) -> None:
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        engines = folder / ENGINE_FOLDER
        check_engine_matches(read_engine_record(engines), this_device())
        self.runners = {}
        for role, graph in record["graphs"].items():
            runner = TrtRunner(EngineFromBytes((engines / engine_name(graph["file"])).read_bytes()))
            runner.activate()
            self.runners[role] = runner
        self.device = "cuda"

    def run(self, role: str, feeds: Arrays) -> Arrays:
        return {name: np.asarray(value) for name, value in self.runners[role].infer(feeds).items()}


class TorchBackend:
    """The PyTorch modules the graphs were exported from, rebuilt from the weights config.json names."""

    name = "torch"

    def __init__(self, folder: Path, record: dict) -> None:
        model = record["model"]
        weights = None if model["random_weights"] else Path(model["weights"])
        config = MODELS.get(model["name"]).make_config() if weights is None else read_llava_config(weights)
        method_record = record["method"]
        method = METHODS.get(method_record["name"])(geometry_of(config), record["keep"], **method_record["options"])
        clip_folder = recorded_folder(model["text_weights"]) if method.text_conditioned else None
        stack = load_stack(model["name"], config, weights, clip_folder, method.text_conditioned, model["seed"])
        self.modules = {"vision": PrunedVisionEncoder(stack, method)}
        self.outputs = {"vision": method.output_names}
        if method.text_conditioned:
            self.modules["text"], self.outputs["text"] = ClipTextEncoder(stack.clip), TEXT_OUTPUTS
        self.device = "cpu"

    def run(self, role: str, feeds: Arrays) -> Arrays:
        return torch_outputs(self.modules[role], [feeds], self.outputs[role])[0]


def open_backend(folder: Path, record: dict, name: str | None):
    """The named backend, or the best one here: a matching TensorRT engine, else onnxruntime."""
    if name is not None and name not in BACKENDS:
        raise PipelineError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name is None:
        device = this_device()
        has_engine = (folder / ENGINE_FOLDER / CONFIG_JSON).is_file()
        name = "tensorrt" if has_engine and device.tensorrt and device.sm is not None else "onnxruntime"
    if name == "tensorrt":
        if not (folder / ENGINE_FOLDER).is_dir():
            raise PipelineError(f"{folder} has no {ENGINE_FOLDER}/ folder: build one with vtp-export build, or "
                                "use the onnxruntime backend")
        try:
            return TensorRTBackend(folder, record)
        except EngineMismatchError as error:
            raise PipelineError(str(error)) from None
        except ImportError:
            raise PipelineError("the tensorrt backend needs the tensorrt package and a CUDA GPU") from None
    return {"onnxruntime": OnnxRuntimeBackend, "torch": TorchBackend}[name](folder, record)
