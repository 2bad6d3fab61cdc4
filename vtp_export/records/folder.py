"""Output folders appear whole or not at all: build in a hidden sibling, rename at the end.

An existing folder is replaced only if vtp-export wrote it, and only if it holds nothing else (files a user
put there, an engine/ built from the old graphs) unless the caller passes replace=True (`--replace`).
"""

import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from vtp_export.errors import OutputFolderError
from vtp_export.onnx.names import CONFIG_JSON, PRODUCER
from vtp_export.util.files import current_umask

# Lists what vtp-export wrote in a folder of its kind (config.json included), or None for a foreign folder.
OwnFiles = Callable[[Path], list[str] | None]


def export_files(folder: Path) -> list[str] | None:
    """The files of an export folder as its config.json lists them; [] for an export of another schema."""
    from vtp_export.errors import RecordError
    from vtp_export.records.export import read_export

    try:
        return [CONFIG_JSON, *read_export(folder, verify=False).files()]
    except RecordError:
        try:
            producer = json.loads((folder / CONFIG_JSON).read_text()).get("producer")
        except (OSError, ValueError, AttributeError):
            return None
        return [CONFIG_JSON] if producer == PRODUCER else None


def check_writable(out: Path, replace: bool = False, own_files: OwnFiles = export_files) -> None:
    """Refuse early, before any work, to replace a folder vtp-export did not write, or one holding more than
    vtp-export wrote there (unless `replace`)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputFolderError(f"{out} exists and is a file: choose another --out")
    try:
        present = sorted(out.iterdir())
    except PermissionError:
        raise OutputFolderError(f"cannot read {out}: permission denied") from None
    if not present:
        return
    ours = own_files(out)
    if ours is None:
        raise OutputFolderError(f"{out} exists and was not written by vtp-export: choose another --out")
    extra = []
    for entry in present:
        if entry.is_dir() and any(name.startswith(f"{entry.name}/") for name in ours):  # a folder of ours: its files
            extra += [name for path in sorted(entry.rglob("*")) if path.is_file()
                      if (name := path.relative_to(out).as_posix()) not in ours]
        elif entry.name not in ours:
            extra.append(entry.name)
    if extra and not replace:
        shown = ", ".join(extra[:4]) + (f" and {len(extra) - 4} more" if len(extra) > 4 else "")
        raise OutputFolderError(f"{out} holds what vtp-export did not write there ({shown}): replacing it would "
                                "delete them; move them away or pass --replace")


@contextlib.contextmanager
def staged_folder(out: Path, replace: bool = False, own_files: OwnFiles = export_files) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `out`, on any failure (Ctrl-C too) it is removed."""
    check_writable(out, replace, own_files)
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
