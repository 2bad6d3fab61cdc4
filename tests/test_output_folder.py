import json

import pytest

from vtp_export.errors import OutputFolderError
from vtp_export.onnx.names import CONFIG_JSON, PRODUCER
from vtp_export.records.folder import staged_folder


def test_success_renames_into_place(tmp_path):
    out = tmp_path / "a" / "b"
    with staged_folder(out) as stage:
        (stage / "f").write_text("x")
        assert not out.exists()
    assert (out / "f").read_text() == "x"
    assert [p.name for p in out.parent.iterdir()] == ["b"]


def test_failure_leaves_nothing_not_even_created_parents(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "a" / "b") as stage:
            (stage / "f").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_replaces_an_earlier_export_but_not_a_foreign_folder(tmp_path):
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / CONFIG_JSON).write_text(json.dumps({"producer": PRODUCER}))
    with staged_folder(ours) as stage:
        (stage / "new").write_text("y")
    assert [p.name for p in ours.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["ours"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("z")
    with pytest.raises(OutputFolderError):
        with staged_folder(foreign):
            pass
    assert (foreign / "keep.txt").read_text() == "z"


def test_an_export_folder_with_its_subfolders_is_ours_but_a_stray_file_in_them_is_not(tmp_path):
    """The runtime files live in subfolders (model/, clip-tokenizer/): listed file by file, so a re-export
    replaces them, and a file vtp-export did not write there is named."""
    from vtp_export.records.folder import check_writable

    out = tmp_path / "export"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    listed = lambda folder: [CONFIG_JSON, "model/config.json"]  # noqa: E731
    check_writable(out, own_files=listed)
    (out / "model" / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match=r"holds what vtp-export did not write there \(model/notes.txt\)"):
        check_writable(out, own_files=listed)
    check_writable(out, replace=True, own_files=listed)
