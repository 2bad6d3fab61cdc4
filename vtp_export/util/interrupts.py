"""Ctrl-C around native code that swallows Python exceptions.

TensorRT calls back into Python (its logger, its progress monitor) and catches whatever a callback raises:
a KeyboardInterrupt arriving there is printed ("Exception caught in log()") and the parse or build goes on.
Inside `deferred_interrupt` a Ctrl-C is only noted; `interrupted()` lets a callback ask the native call to
stop (TensorRT's progress monitor cancels a build), and KeyboardInterrupt is raised once the call returns.
"""

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield lambda: False
        return
    noted: list[bool] = []
    previous = signal.signal(signal.SIGINT, lambda *_: noted.append(True))
    try:
        yield lambda: bool(noted)
    finally:
        signal.signal(signal.SIGINT, previous)
    if noted:
        raise KeyboardInterrupt
