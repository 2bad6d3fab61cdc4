"""JSON <-> the typed records (dataclasses): encoding, checked decoding with one-line errors, versioned reads,
atomic writes, file digests."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

from vtp_export import __version__
from vtp_export.contract import RandomWeights, WeightsFolder, WeightsSource, weights_from_record
from vtp_export.errors import RecordError
from vtp_export.onnx.names import PRODUCER
from vtp_export.util.files import current_umask

ABSENT_IF_NONE = "vtp_export.absent_if_none"


def optional_key() -> Any:
    """A record field whose key is left out of the JSON when its value is None (rather than written null): for
    keys that only some records of a kind have."""
    return dataclasses.field(default=None, metadata={ABSENT_IF_NONE: True})


def encode(value: Any) -> Any:
    if isinstance(value, (RandomWeights, WeightsFolder)):
        return value.as_record()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not (f.metadata.get(ABSENT_IF_NONE) and getattr(value, f.name) is None)}
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def decode(hint: Any, data: Any, where: str) -> Any:
    """`data` (parsed JSON) as `hint`; RecordError naming the key path `where` on any mismatch."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return data
    if hint == WeightsSource or set(args) == {RandomWeights, WeightsFolder}:
        try:
            return weights_from_record(data)
        except (KeyError, ValueError, TypeError):
            raise RecordError(f"{where} is not a weights source") from None
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return decode(option, data, where)
            except RecordError:
                continue
        raise RecordError(f"{where} has an unexpected value {data!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(data, dict):
            raise RecordError(f"{where} should be an object")
        hints = typing.get_type_hints(hint)
        values = {}
        for f in dataclasses.fields(hint):
            if f.name in data:
                values[f.name] = decode(hints[f.name], data[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where} lacks the key {f.name!r}")
        return hint(**values)
    if origin in (list, tuple):
        if not isinstance(data, list):
            raise RecordError(f"{where} should be a list")
        items = [decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(data, dict):
            raise RecordError(f"{where} should be an object")
        return {k: decode(args[1], v, f"{where}.{k}") for k, v in data.items()}
    if hint is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if hint is Path and isinstance(data, str):
        return Path(data)
    if isinstance(hint, type) and isinstance(data, hint) and not (hint is int and isinstance(data, bool)):
        return data
    raise RecordError(f"{where} should be {getattr(hint, '__name__', hint)}, not {data!r}")


def load_json(path: Path, what: str) -> dict:
    """A JSON object from `path`, or RecordError saying what is wrong with the file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecordError(f"{path.parent} has no {path.name}: not a {what}") from None
    except PermissionError:
        raise RecordError(f"cannot read {path}: permission denied") from None
    except IsADirectoryError:
        raise RecordError(f"{path} is a folder, not a {what}'s {path.name}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecordError(f"cannot read {path}: {error}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(f"{path} is not valid JSON ({error.msg} at line {error.lineno}): the file is corrupt") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path} is not a JSON object: the file is corrupt")
    return data


def parse_record(cls: type, data: dict, path: Path, schema: str, what: str) -> Any:
    if data.get("producer") != PRODUCER:
        raise RecordError(f"{path} was not written by vtp-export: not a {what}")
    found = data.get("schema")
    if found != schema:
        wrote = f"schema {found}" if found else "no schema (an older vtp-export)"
        raise RecordError(f"{path} has {wrote}; this vtp-export {__version__} reads {schema}: redo it with this version")
    return decode(cls, data, path.name)


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a temp file beside `path`, renamed over it. Non-finite floats are refused."""
    try:
        text = json.dumps(encode(data), indent=2, allow_nan=False) + "\n"
    except ValueError as error:
        raise RecordError(f"cannot record {path.name}: {error} (a non-finite number)") from None
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.chmod(temporary, 0o666 & ~current_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
