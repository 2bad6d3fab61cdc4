"""Latency profiles: stage statistics, the sweep command with its reports and plots, comparisons."""

import csv
import json

import numpy as np
import pytest

from vtp_export.cli import main
from vtp_export.errors import RecordError, UsageError
from vtp_export.records.profile import PROFILE_SCHEMA, read_report
from vtp_export.runtime import profile as profiling

pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_summary_statistics():
    seconds = list(np.linspace(0.001, 0.1, 100))
    stats = profiling.summary(seconds)
    assert stats.runs == 100 and stats.min_ms == 1.0 and stats.max_ms == 100.0
    assert stats.p50_ms == pytest.approx(50.5) and stats.p90_ms == pytest.approx(90.1, abs=0.01)
    assert stats.mean_ms == pytest.approx(50.5) and stats.std_ms > 0


def test_timed_counts_runs_or_fills_a_duration():
    calls = []
    assert len(profiling.timed(lambda: calls.append(1), warmup=2, runs=5, duration_s=None)) == 5
    assert len(calls) == 7
    assert len(profiling.timed(lambda: None, warmup=0, runs=1, duration_s=0.05)) > 1


def test_profile_of_a_text_conditioned_export(cached_export):
    out = cached_export("llava15-tiny", "trim", 64, "cpu", verify_samples=1)  # a golden export
    profile = profiling.profile_export(out, runs=2, warmup=0, new_tokens=3)
    assert profile.tokens.visual == 64 and profile.export.label == "trim"
    assert set(profile.stages) == set(profiling.STAGES)
    assert all(s.p50_ms > 0 for s in profile.stages.values())
    assert profile.memory.peak_host_rss_mib > 0 and profile.export.backend == "onnxruntime"
    assert profile.load.other_load >= 0


def test_device_record():
    device = profiling.device_record()
    assert device.cpu and device.cpu_threads_used >= 1
    assert {"torch", "onnxruntime", "transformers", "vtp_export"} <= set(device.versions)


def test_sweep_writes_json_csv_plots_and_a_table(tmp_path, capsys):
    args = ["profile", "--model", "llava15-tiny", "--random-weights", "--method", "holov,holov:variant=paper",
            "--keep", "576,64,32", "--runs", "2", "--warmup", "0", "--new-tokens", "2", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "TTFT ratio" in out and "± std" in out and "[########################] 5/5 done" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    runs = [(p["export"]["label"], p["tokens"]["visual"]) for p in report["profiles"]]
    assert runs == [("none", 576), ("holov", 64), ("holov variant=paper", 64), ("holov", 32),
                    ("holov variant=paper", 32)], "variants stay apart"
    rows = {(r["label"], r["visual_tokens"]): r for r in report["summary"]}
    assert rows[("none", 576)]["ttft_ratio"] == 1.0 and 0 < rows[("holov", 64)]["ideal_ratio"] < 1
    with (tmp_path / "r" / "stages.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 5 * 5  # five exports x five stages (no text graph)
    for name in ("latency_vs_keep.png", "stage_breakdown.png"):
        assert (tmp_path / "r" / name).read_bytes()[:8] == PNG_MAGIC
    assert main(["profile", "--compare", str(tmp_path / "r" / "report.json"), str(tmp_path / "r" / "report.json")]) == 0
    assert "after/before" in capsys.readouterr().out


def test_compare_and_bad_reports(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"producer": "vtp-export", "schema": "something else"}))
    with pytest.raises(RecordError, match="has schema something else; this vtp-export .* reads " + PROFILE_SCHEMA):
        read_report(tmp_path / "other.json")
    with pytest.raises(RecordError, match="has no missing.json"):
        read_report(tmp_path / "missing.json")
    machine = {"cpu": "x", "cpu_threads_used": 1, "cpu_count": 2, "os": "", "python": "", "versions": {}, "gpu": None}
    (tmp_path / "partial.json").write_text(json.dumps({"producer": "vtp-export", "schema": PROFILE_SCHEMA,
                                                       "created": "", "device": machine, "summary": [],
                                                       "profiles": [{"export": {}}]}))
    with pytest.raises(RecordError, match=r"partial.json.profiles\[0\].export lacks the key 'folder'"):
        read_report(tmp_path / "partial.json")


def test_compare_matches_label_tokens_and_stage():
    def report(method_label, prefill_ms):
        stats = profiling.summary([prefill_ms / 1e3])
        profile = profiling.Profile(
            export=profiling.ProfiledExport("f", "m", method_label.split()[0], method_label, 64, "cpu", "ort", "hf"),
            tokens=profiling.TokenCounts(64, 100, 2), llm=profiling.LlmInfo("r", 2, 64), stages={"prefill": stats},
            memory={}, load=profiling.MachineLoad(0.0, 0.0, False))
        return profiling.ProfileReport("vtp-export", PROFILE_SCHEMA, "", {}, [profile], [])

    assert profiling.compare(report("holov", 10.0), report("holov", 5.0)).splitlines()[1].split()[-1] == "0.500"
    with pytest.raises(UsageError, match="share no"):
        profiling.compare(report("holov", 10.0), report("holov variant=paper", 5.0))


@pytest.mark.parametrize("args,message", [
    ([], "needs export folders"),
    (["--model", "llava15-tiny", "--method", "fastv", "--keep", "64", "--random-weights"], "unknown method 'fastv'"),
    (["--model", "llava15-tiny", "--method", "holov", "--keep", "64,abc", "--random-weights"],
     "expected comma-separated whole numbers"),
    (["--model", "llava15-tiny", "--method", "holov", "--keep", "64", "--new-tokens", "1"], "use 2 or more"),
    (["--model", "llava15-tiny", "--method", "holov", "--keep", "64", "--new-tokens", "0"], "use 2 or more"),
    (["--model", "llava15-tiny", "--method", "holov:crops", "--keep", "64"], "options go as method:key=value"),
    (["--model", "llava15-tiny", "--method", "holov", "--keep", "64", "--llm-backend", "llama.cpp"],
     "a sweep's scratch exports have no GGUF: with --llm-backend llama.cpp pass --llm FILE.gguf"),
])
def test_bad_profile_requests_fail_before_any_export(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["profile", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_profile_out_must_be_a_report_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    sweep = ["profile", "--model", "llava15-tiny", "--method", "fastervlm", "--keep", "8", "--runs", "1"]
    assert main([*sweep, "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main([*sweep, "--out", str(tmp_path / "mine")]) == 2
    assert "was not written by vtp-export" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
