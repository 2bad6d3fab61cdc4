"""onnxruntime sessions with explicit threads (more threads than cores halves the speed)."""

import os
from pathlib import Path

import onnxruntime as ort


def cpu_threads() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def available_providers() -> list[str]:
    return ort.get_available_providers()


def session_options(threads: int | None = None, low_memory: bool = False) -> ort.SessionOptions:
    """Explicit CPU threads; low_memory: no memory arena, whose blocks outlive the run (the export's few checking
    runs of a full-size graph: about 0.4 GB less at the peak)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or cpu_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_cpu_mem_arena = not low_memory
    return options


def onnxruntime_session(path: Path, threads: int | None = None, providers: list[str] | None = None,
                        low_memory: bool = False) -> ort.InferenceSession:
    """A session with explicit CPU threads; `providers` ahead of the CPU provider where given (CUDA)."""
    options = session_options(threads, low_memory)
    return ort.InferenceSession(str(path), options, providers=[*(providers or []), "CPUExecutionProvider"])
