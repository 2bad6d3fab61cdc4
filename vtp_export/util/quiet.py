"""Third-party libraries print progress and warnings freely; the CLI's output stays ours."""

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(logger_names: tuple[str, ...], stderr: bool = False) -> Iterator[None]:
    """Warnings off, stdout (and stderr where asked) swallowed, the named loggers at ERROR, for the block.
    Errors still surface as the libraries' exceptions."""
    loggers = [logging.getLogger(name) for name in logger_names]
    previous = [logger.level for logger in loggers]
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        if stderr:
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, previous):
                logger.setLevel(level)
