"""Proof that the real TensorRT ONNX parser accepts a graph, without a GPU.

onnxruntime accepting a graph proves nothing about TensorRT. TensorRT-RTX (PyPI: tensorrt-rtx-cu12-*) ships
the same ONNX parser and a builder that runs on a CPU-only machine, so CI parses every graph and builds
an engine from it. Where the full `tensorrt` package and a GPU are present, that one is used instead.
"""

import importlib
import time
from pathlib import Path
from types import ModuleType

from vtp_export.errors import TensorRTParseError

BINDINGS = ("tensorrt", "tensorrt_rtx_bindings")


def _collecting_logger(trt: ModuleType):
    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg: str) -> None:
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                self.errors.append(msg)

    return CollectingLogger()


def available_builder() -> tuple[ModuleType, object, object] | None:
    """(module, builder, logger) of the first TensorRT binding that can create a builder here."""
    for name in BINDINGS:
        try:
            trt = importlib.import_module(name)
            logger = _collecting_logger(trt)
            builder = trt.Builder(logger)
        except Exception:  # not installed, or no GPU for the full TensorRT
            continue
        if builder is not None:
            return trt, builder, logger
    return None


def check_with_tensorrt_parser(path: Path, build_engine: bool) -> dict:
    """Parse `path` (external data beside it), and build an engine if asked; raise TensorRTParseError.

    Parsing costs little memory; a CPU-only engine build holds about four copies of the weights.
    """
    found = available_builder()
    if found is None:
        return {"checked": False, "reason": "no TensorRT binding installed (pip install 'vtp-export[tensorrt-check]')"}
    trt, builder, logger = found
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    start = time.perf_counter()
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise TensorRTParseError(f"TensorRT ONNX parser rejected {path.name}: {' | '.join(errors)[:500]}")
    record = {
        "checked": True,
        "parser": f"{trt.__name__} {trt.__version__}",
        "layers": network.num_layers,
        "parse_seconds": round(time.perf_counter() - start, 2),
    }
    if build_engine:
        start = time.perf_counter()
        engine = builder.build_serialized_network(network, builder.create_builder_config())
        if engine is None:
            raise TensorRTParseError(f"TensorRT builder failed on {path.name}: {' | '.join(logger.errors)[:500]}")
        record |= {"engine_built": True, "build_seconds": round(time.perf_counter() - start, 2)}
    return record
