"""Latency profiles: stage statistics, the sweep command with its reports and plots, comparisons."""

import csv
import json

import numpy as np
import pytest

from vtp_export import profiling
from vtp_export.cli import main
from vtp_export.errors import UsageError
from vtp_export.exporter import ExportRequest, export

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_summary_statistics():
    seconds = list(np.linspace(0.001, 0.1, 100))
    stats = profiling.summary(seconds)
    assert stats["runs"] == 100 and stats["min_ms"] == 1.0 and stats["max_ms"] == 100.0
    assert stats["p50_ms"] == pytest.approx(50.5) and stats["p90_ms"] == pytest.approx(90.1, abs=0.01)
    assert stats["mean_ms"] == pytest.approx(50.5) and stats["std_ms"] > 0


def test_timed_counts_runs_or_fills_a_duration():
    calls = []
    assert len(profiling.timed(lambda: calls.append(1), warmup=2, runs=5, duration_s=None)) == 5
    assert len(calls) == 7
    assert len(profiling.timed(lambda: None, warmup=0, runs=1, duration_s=0.05)) > 1


def test_profile_of_a_text_conditioned_export(tmp_path):
    out = export(ExportRequest(model="llava15-tiny", method="trim", keep=32, target="cpu", out=tmp_path / "e",
                               verify_samples=1))
    report = profiling.profile_export(out, runs=2, warmup=0, new_tokens=3)
    assert report["schema"] == profiling.SCHEMA and report["tokens"]["visual"] == 32
    assert set(report["stages"]) == set(profiling.STAGES)
    assert all(s["p50_ms"] > 0 for s in report["stages"].values())
    assert report["memory"]["peak_host_rss_mib"] > 0 and report["export"]["backend"] == "onnxruntime"


def test_device_record():
    device = profiling.device_record()
    assert device["cpu"] and device["cpu_threads_used"] >= 1
    assert {"torch", "onnxruntime", "transformers", "vtp_export"} <= set(device["versions"])


def test_sweep_writes_json_csv_plots_and_a_table(tmp_path, capsys):
    args = ["profile", "--model", "llava15-tiny", "--random-weights", "--method", "fastervlm,visionzip",
            "--keep", "576,64,32", "--runs", "2", "--warmup", "0", "--new-tokens", "2", "--out", str(tmp_path / "r")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "TTFT ratio" in out and "[########################] 5/5 done" in out
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    runs = [(p["export"]["method"], p["tokens"]["visual"]) for p in report["profiles"]]
    assert runs == [("none", 576), ("fastervlm", 64), ("visionzip", 64), ("fastervlm", 32), ("visionzip", 32)]
    rows = {(r["method"], r["visual_tokens"]): r for r in report["summary"]}
    assert rows[("none", 576)]["ttft_ratio"] == 1.0 and 0 < rows[("fastervlm", 64)]["ideal_ratio"] < 1
    with (tmp_path / "r" / "stages.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 5 * 5  # five exports x five stages (no text graph)
    for name in ("latency_vs_keep.png", "stage_breakdown.png"):
        assert (tmp_path / "r" / name).read_bytes()[:8] == PNG_MAGIC
    assert main(["profile", "--compare", str(tmp_path / "r" / "report.json"), str(tmp_path / "r" / "report.json")]) == 0
    assert "after/before" in capsys.readouterr().out


def test_compare_and_bad_reports(tmp_path):
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(UsageError, match="is not a vtp-export profile report"):
        profiling.read_report(tmp_path / "other.json")
    with pytest.raises(UsageError, match="cannot read profile report"):
        profiling.read_report(tmp_path / "missing.json")
    a = {"profiles": [{"export": {"method": "holov"}, "tokens": {"visual": 64}, "stages": {"prefill": {"p50_ms": 10.0}}}]}
    b = {"profiles": [{"export": {"method": "holov"}, "tokens": {"visual": 64}, "stages": {"prefill": {"p50_ms": 5.0}}}]}
    assert profiling.compare(a, b).splitlines()[1].split()[-1] == "0.500"
    with pytest.raises(UsageError, match="share no"):
        profiling.compare(a, {"profiles": []})


def test_profile_needs_folders_or_a_sweep(capsys):
    assert main(["profile"]) == 2
    assert "needs export folders" in capsys.readouterr().err
