"""Output folders appear whole or not at all: build in a hidden sibling, rename at the end."""

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from vtp_export.errors import OutputFolderError, UsageError
from vtp_export.graph_io import CONFIG_JSON, PRODUCER


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_our_folder(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG_JSON).read_text()).get("producer") == PRODUCER
    except (OSError, ValueError, AttributeError):
        return False


def check_writable(out: Path) -> None:
    """Refuse early, before any work, to replace a folder that vtp-export did not write."""
    if out.exists() and not (out.is_dir() and (is_our_folder(out) or not any(out.iterdir()))):
        raise OutputFolderError(f"{out} exists and was not written by vtp-export: choose another --out")


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `out`, on any failure it is removed."""
    check_writable(out)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        stage.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; the result is an ordinary folder
    except OSError as error:
        raise OutputFolderError(f"cannot write under {out.parent}: {error.strerror}") from None
    try:
        yield stage
        if out.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(retired / out.name)
            stage.rename(out)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for folder in created:  # innermost first; a failed job leaves the tree as it found it
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def read_export(folder: Path) -> dict:
    if not folder.is_dir():
        raise UsageError(f"export folder {folder} does not exist")
    if not is_our_folder(folder):
        raise UsageError(f"{folder} was not written by vtp-export (no config.json from it)")
    record = json.loads((folder / CONFIG_JSON).read_text())
    if "graphs" not in record or "target" not in record:
        raise UsageError(f"{folder} is an engine folder or from an older vtp-export: pass an export folder")
    for graph in record["graphs"].values():
        path = folder / graph["file"]
        if not path.is_file():
            raise UsageError(f"{folder} lacks {graph['file']}, which its config.json lists")
    return record
