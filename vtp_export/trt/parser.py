"""Proof that the real TensorRT ONNX parser accepts a graph, without a GPU.

onnxruntime accepting a graph proves nothing about TensorRT. TensorRT-RTX (PyPI: tensorrt-rtx-cu12-*) ships
the same ONNX parser and a builder that runs on a CPU-only machine, so CI parses every graph and builds
an engine from it. Where the full `tensorrt` package and a GPU are present, that one is used instead.
"""

import dataclasses
import importlib
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from vtp_export.errors import TensorRTParseError
from vtp_export.records.graph import ParserCheck
from vtp_export.util.interrupts import deferred_interrupt

BINDINGS = ("tensorrt", "tensorrt_rtx_bindings")


def collecting_logger(trt: ModuleType):
    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg: str) -> None:
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                self.errors.append(msg)

    return CollectingLogger()


def progress_monitor(trt: ModuleType, progress: Callable[[str], None], interrupted: Callable[[], bool]):
    """TensorRT's build phases as progress lines; a Ctrl-C (noted by deferred_interrupt) cancels the build."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            if parent_phase is None:
                progress(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return not interrupted()  # False cancels the build

        def phase_finish(self, phase_name):
            pass

    return Monitor()


def available_builder() -> tuple[ModuleType, object, object] | None:
    """(module, builder, logger) of the first TensorRT binding that can create a builder here."""
    for name in BINDINGS:
        try:
            trt = importlib.import_module(name)
            logger = collecting_logger(trt)
            builder = trt.Builder(logger)
        except Exception:  # not installed, or no GPU for the full TensorRT
            continue
        if builder is not None:
            return trt, builder, logger
    return None


def check_with_tensorrt_parser(path: Path, build_engine: bool) -> ParserCheck:
    """Parse `path` (external data beside it), and build an engine if asked; raise TensorRTParseError.

    Parsing costs little memory; a CPU-only engine build holds about four copies of the weights.
    """
    found = available_builder()
    if found is None:
        return ParserCheck(checked=False,
                           reason="no TensorRT binding installed (pip install 'vtp-export[tensorrt-check]')")
    trt, builder, logger = found
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    start = time.perf_counter()
    with deferred_interrupt():
        parsed = parser.parse_from_file(str(path))
    if not parsed:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)] or logger.errors
        raise TensorRTParseError(f"TensorRT ONNX parser rejected {path.name}: {' | '.join(errors)[:500]}")
    record = ParserCheck(checked=True, parser=f"{trt.__name__} {trt.__version__}", layers=network.num_layers,
                         parse_seconds=round(time.perf_counter() - start, 2))
    if build_engine:
        start = time.perf_counter()
        with deferred_interrupt() as interrupted:
            config = builder.create_builder_config()
            if hasattr(trt, "IProgressMonitor"):
                config.progress_monitor = progress_monitor(trt, lambda _: None, interrupted)
            engine = builder.build_serialized_network(network, config)
        if engine is None:
            raise TensorRTParseError(f"TensorRT builder failed on {path.name}: {' | '.join(logger.errors)[:500]}")
        record = dataclasses.replace(record, engine_built=True, build_seconds=round(time.perf_counter() - start, 2))
    return record
