"""Export folders are checked against their record before use: a swapped, truncated, missing or edited file,
or a record that lies about the graph, is refused in one line naming the file; typed records name what is
missing or mistyped."""

import json
import shutil

import pytest

from vtp_export.cli import main
from vtp_export.errors import RecordError
from vtp_export.records.export import EXPORT_SCHEMA, ExportRecord, read_export
from vtp_export.records.profile import ProfileReport
from vtp_export.records.codec import decode, write_json

@pytest.fixture(scope="module")
def exports(cached_export):
    """Two golden llava15-tiny exports of other I/O (64 and 576 tokens), from the session's cache: read only;
    each test tampers with its own copy (`folder`)."""
    return (cached_export("llava15-tiny", "fastervlm", 64, "cpu", verify_samples=1),
            cached_export("llava15-tiny", "none", None, "cpu", verify_samples=1))


@pytest.fixture
def folder(exports, tmp_path):
    copy = tmp_path / "export"
    shutil.copytree(exports[0], copy)
    return copy


def edit_config(folder, change):
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))


def test_an_intact_export_reads_back(exports):
    record = read_export(exports[0])
    assert isinstance(record, ExportRecord) and record.keep == 64 and record.schema == EXPORT_SCHEMA


def swap_graph(folder, exports):
    shutil.copy(exports[1] / "vision.onnx", folder / "vision.onnx")


def zero_sha256(folder, exports):
    edit_config(folder, lambda c: c["graphs"]["vision"].update(sha256="0" * 64))


def edit_keep(folder, exports):
    edit_config(folder, lambda c: c.update(keep=32))


def truncate_graph(folder, exports):
    data = (folder / "vision.onnx").read_bytes()
    (folder / "vision.onnx").write_bytes(data[: len(data) // 2])


def drop_data(folder, exports):
    (folder / "vision.onnx.data").unlink()


def drop_key(folder, exports):
    edit_config(folder, lambda c: c["graphs"]["vision"].pop("inputs"))


def wrong_type(folder, exports):
    edit_config(folder, lambda c: c.update(keep="sixty-four"))


def corrupt_json(folder, exports):
    (folder / "config.json").write_text("{broken")


def old_schema(folder, exports):
    edit_config(folder, lambda c: c.pop("schema"))


def consistent_swap(folder, exports):
    """A graph of other I/O with its sha256 recorded: the record's I/O no longer matches the graph."""
    shutil.copy(exports[1] / "vision.onnx", folder / "vision.onnx")
    shutil.copy(exports[1] / "vision.onnx.data", folder / "vision.onnx.data")
    other = json.loads((exports[1] / "config.json").read_text())["graphs"]["vision"]
    edit_config(folder, lambda c: c["graphs"]["vision"].update(sha256=other["sha256"],
                                                               external_data=other["external_data"]))


TAMPERING = {
    "swapped-graph": (swap_graph, "vision.onnx does not match the sha256 its config.json records"),
    "zeroed-sha256": (zero_sha256, "vision.onnx does not match the sha256 its config.json records"),
    "edited-keep": (edit_keep, "says keep 32, its vision graph keeps 64 tokens"),
    "truncated-graph": (truncate_graph, "vision.onnx does not match the sha256"),
    "missing-data": (drop_data, "lacks vision.onnx.data, which its config.json lists"),
    "missing-key": (drop_key, "config.json.graphs.vision lacks the key 'inputs'"),
    "mistyped-value": (wrong_type, "config.json.keep should be int, not 'sixty-four'"),
    "corrupt-json": (corrupt_json, "is not valid JSON"),
    "old-schema": (old_schema, "has no schema (an older vtp-export)"),
    "consistent-swap": (consistent_swap, "its inputs/outputs are not the ones config.json records"),
}


@pytest.mark.parametrize("case", TAMPERING)
def test_tampered_folders_are_refused(case, folder, exports):
    tamper, message = TAMPERING[case]
    tamper(folder, exports)
    with pytest.raises(RecordError, match=message.replace("(", "\\(").replace(")", "\\)")):
        read_export(folder)


@pytest.mark.parametrize("command", [["run", "{f}", "--prompt", "x"], ["lint", "{f}"], ["build", "{f}"],
                                     ["profile", "{f}", "--runs", "1"]])
def test_every_command_refuses_a_tampered_folder_in_one_line(command, folder, exports, capsys, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    swap_graph(folder, exports)
    assert main([part.format(f=folder) for part in command]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vtp-export: error: ") and err.count("\n") == 1 and "vision.onnx" in err
    assert not (tmp_path / "profile").exists()


def test_truncated_graph_with_its_sha256_recorded_is_one_line(folder):
    truncate_graph(folder, None)
    from vtp_export.records.codec import sha256

    edit_config(folder, lambda c: c["graphs"]["vision"].update(sha256=sha256(folder / "vision.onnx")))
    with pytest.raises(RecordError, match="is not a valid ONNX model"):
        read_export(folder)


def test_unreadable_files_are_one_line(folder, monkeypatch):
    from pathlib import Path

    real = Path.read_text

    def denied(self, *args, **kwargs):
        if self.name == "config.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(RecordError, match="cannot read .*config.json: permission denied"):
        read_export(folder)


def test_decode_names_the_path_of_a_mistyped_entry():
    data = {"producer": "vtp-export", "schema": "s", "created": "", "device": {}, "summary": [], "profiles": [3]}
    with pytest.raises(RecordError, match=r"report.profiles\[0\] should be an object"):
        decode(ProfileReport, data, "report")


def test_records_refuse_non_finite_numbers(tmp_path):
    with pytest.raises(RecordError, match="non-finite"):
        write_json(tmp_path / "x.json", {"tau": float("inf")})
    assert list(tmp_path.iterdir()) == []
