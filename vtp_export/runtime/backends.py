"""Vision (and text) graph backends behind one protocol: onnxruntime, a TensorRT engine, or the PyTorch
module (reference). Each maps graph input names to graph output names exactly as the exported graphs
define them, and releases what it holds on close()."""

from pathlib import Path
from typing import Protocol

import numpy as np

from vtp_export.errors import EngineMismatchError, PipelineError, RecordError
from vtp_export.onnx.names import CONFIG_JSON, ENGINE_FOLDER
from vtp_export.onnx.sessions import available_providers, onnxruntime_session
from vtp_export.records.engine import read_engine_record
from vtp_export.records.export import ExportRecord
from vtp_export.trt.device import check_engine_matches, this_device
from vtp_export.trt.recipe import engine_name

Arrays = dict[str, np.ndarray]
BACKENDS = ("onnxruntime", "tensorrt", "torch")


class VisionBackend(Protocol):
    name: str
    device: str  # "cpu" or "cuda"

    def run(self, role: str, feeds: Arrays) -> Arrays:
        """Run the graph of `role` ("vision" or "text")."""

    def close(self) -> None: ...


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, folder: Path, record: ExportRecord) -> None:
        providers = [p for p in ("CUDAExecutionProvider",) if p in available_providers()]
        self.sessions = {role: onnxruntime_session(folder / graph.file, providers=providers or None)
                         for role, graph in record.graphs.items()}
        self.device = "cuda" if providers else "cpu"

    def run(self, role: str, feeds: Arrays) -> Arrays:
        session = self.sessions[role]
        return dict(zip((o.name for o in session.get_outputs()), session.run(None, feeds)))

    def close(self) -> None:
        self.sessions.clear()


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, folder: Path, record: ExportRecord) -> None:
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        engines = folder / ENGINE_FOLDER
        check_engine_matches(read_engine_record(engines), this_device())
        self.runners = {}
        try:
            for role, graph in record.graphs.items():
                runner = TrtRunner(EngineFromBytes((engines / engine_name(graph.file)).read_bytes()))
                runner.activate()
                self.runners[role] = runner
        except BaseException:
            self.close()
            raise
        self.device = "cuda"

    def run(self, role: str, feeds: Arrays) -> Arrays:
        return {name: np.asarray(value) for name, value in self.runners[role].infer(feeds).items()}

    def close(self) -> None:
        for runner in self.runners.values():
            runner.deactivate()
        self.runners.clear()


def open_backend(folder: Path, record: ExportRecord, name: str | None) -> VisionBackend:
    """The named backend, or the best one here: a matching TensorRT engine, else onnxruntime."""
    if name is not None and name not in BACKENDS:
        raise PipelineError(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name is None:
        has_engine = (folder / ENGINE_FOLDER / CONFIG_JSON).is_file()
        device = this_device() if has_engine else None
        name = "tensorrt" if device is not None and device.tensorrt and device.sm is not None else "onnxruntime"
    if name == "tensorrt":
        if not (folder / ENGINE_FOLDER).is_dir():
            raise PipelineError(f"{folder} has no {ENGINE_FOLDER}/ folder: build one with vtp-export build, or "
                                "use the onnxruntime backend")
        try:
            return TensorRTBackend(folder, record)
        except (EngineMismatchError, RecordError) as error:
            raise PipelineError(str(error)) from None
        except ImportError:
            raise PipelineError("the tensorrt backend needs the tensorrt package and a CUDA GPU") from None
    if name == "torch":
        try:
            from vtp_export.runtime.torch_backend import TorchBackend
        except ImportError:
            raise PipelineError("the torch backend needs PyTorch (pip install torch)") from None
        return TorchBackend(folder, record)
    return OnnxRuntimeBackend(folder, record)
