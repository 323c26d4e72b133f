"""The trainer as its own profiler (issue 24): throughput and efficiency fields in every record, a profiler
window writing a trace and a time-by-category table that adds up to the step, a run summary, the side-by-side
report, --dry-run, and clear errors for bad profiling options. Speed itself is a benchmark's business
(benchmarks/bench_telemetry.py), never a test's."""

import gzip
import json
import re

import pytest

import train.loop as trainer
import train.report as report
from train.config import ConfigError, parse_config
from train.data.synthetic import write_dataset
from train.profiling import HOST, IDLE

from _train_helpers import train_cfg

FIELDS = ("img_per_s", "patches_per_s", "step_ms", "step_ms_p90", "data_wait_pct", "tflops", "tflops_executed",
          "mfu_pct", "peak_mem_gib")


@pytest.fixture(scope="module")
def stem(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data")), tiles=40, size=64, seed=2, quiet=True,
                         splits=(1.0, 0.0, 0.0))


def _cfg(stem, out, **kw):
    return train_cfg(stem, out, **({"steps": 8, "log_every": 4, "ckpt_every": 8, "seed": 1, "decoder_dim": 32,
                                    "health_every": 10, "health_samples": 8, "mask_ratio": 0.5} | kw))


@pytest.fixture(scope="module")
def profiled(stem, tmp_path_factory):
    """One profiled run, shared by the tests that read its outputs (a run costs seconds)."""
    out = tmp_path_factory.mktemp("run") / "profiled"
    result = trainer.pretrain(_cfg(stem, out, steps=12, profile_steps="5:8"))
    return out, result


def test_every_record_has_throughput_efficiency_and_memory(profiled):
    out, _ = profiled
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in records] == [4, 8, 12]
    for r in records:
        missing = [f for f in FIELDS if r.get(f) is None]
        assert not missing, missing
        # visible patches: crop 16 / patch 8 is 4 patches, mask ratio 0.5 keeps 2 of each image
        assert r["img_per_s"] > 0 and r["patches_per_s"] == pytest.approx(2 * r["img_per_s"])
        assert r["step_ms"] <= r["step_ms_p90"] and 0 <= r["data_wait_pct"] <= 100
        assert r["tflops"] == pytest.approx(r["tflops_executed"])  # sparse executes the model's FLOPs
        assert 0 < r["mfu_pct"] < 100 and r["peak_mem_gib"] > 0.01


def test_health_is_logged_at_the_first_logging_point_then_every_n(stem, tmp_path):
    trainer.pretrain(_cfg(stem, tmp_path, steps=12, log_every=2, health_every=3))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    with_health = [r["step"] for r in records if "health_rank" in r]
    assert with_health == [2, 8]
    r = records[0]
    assert 1 <= r["health_rank"] <= r["health_rank_max"] == 8 and r["health_std"] > 0


def test_the_profile_window_writes_a_trace_and_a_table_that_adds_up(profiled):
    out, _ = profiled
    prof = out / "profile"
    with gzip.open(prof / "trace.json.gz", "rt") as f:
        trace = json.load(f)
    assert trace["traceEvents"] and trace["distributedInfo"] == {"rank": 0}  # what HTA needs
    table = json.loads((prof / "ops.json").read_text())
    assert table["steps"] == 4 and table["step_ms"] > 0
    measured = sum(ms for cat, ms in table["categories"].items() if cat != IDLE)
    assert measured == pytest.approx(table["step_ms"], rel=0.10), table["categories"]
    cats = table["categories"]
    for cat in ("sparse dwconv", "GRN / GELU+GRN", "LayerNorm", "matmul", "optimiser", HOST):
        assert cats.get(cat, 0) > 0, (cat, cats)
    assert table["gb_per_s"].get("sparse dwconv", 0) > 0  # the registry knows the bytes of our ops
    md = (prof / "ops.md").read_text()
    assert "| sparse dwconv |" in md and "top ops" in md


def test_the_run_goes_on_after_the_window_and_ends_with_a_summary(profiled):
    out, result = profiled
    assert result["step"] == 12
    s = json.loads((out / "summary.json").read_text())
    for key in ("wall_s", "img_per_s", "data_wait_pct", "tflops", "mfu_pct", "peak_mem_gib", "backend", "impls",
                "precision", "device_name", "versions", "commit", "peak_source", "gflop_per_step"):
        assert s.get(key) is not None, key
    assert s["steps"] == 12 and s["backend"] == "sparse" and s["impls"]["sparse_dwconv2d"] == "cpu"
    assert "measured at start" in s["peak_source"]  # on CPU the peak is measured, and the record says so


def test_report_prints_runs_side_by_side_and_writes_a_picture(stem, profiled, tmp_path, capsys):
    out, _ = profiled
    dense = tmp_path / "dense"
    trainer.pretrain(_cfg(stem, dense, steps=4, backend="dense", health_every=0))
    png = tmp_path / "cmp.png"
    assert report.main([str(out), str(dense), "--png", str(png)]) == 0
    text = capsys.readouterr().out
    assert "img/s vs first" in text and "dense" in text and "sparse" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_names_a_folder_without_a_summary(tmp_path, capsys):
    assert report.main([str(tmp_path), "--png", str(tmp_path / "x.png")]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_dry_run_prints_flops_and_writes_nothing(stem, tmp_path, capsys):
    out = tmp_path / "never"
    trainer.main(["--data", stem, "--crop", "16", "--decoder-dim", "32", "--out", str(out), "--dry-run",
                  "--batch-size", "4", "--device", "cpu"])
    text = capsys.readouterr().out
    assert re.search(r"FLOPs per step +model [\d.]+ GFLOP \(forward [\d.]+, backward [\d.]+\)", text), text
    assert "parameters" in text and "activations" in text and "40 training samples" in text
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--profile-steps", "8:5"], "--profile-steps must be A:B, two optimiser steps with 1 <= A <= B"),
    (["--profile-steps", "0:3"], "--profile-steps must be A:B"),
    (["--profile-steps", "five"], "--profile-steps must be A:B"),
    (["--profile-steps", "5:80", "--steps", "20"], "--profile-steps 5:80: step 80 is after the run's last step"),
    (["--peak-tflops", "-1"], "--peak-tflops must be a finite number > 0"),
    (["--peak-tflops", "nan"], "--peak-tflops must be a finite number > 0"),
    (["--profile-memory"], "--profile-memory must be used with --profile-steps"),
    (["--health-every", "-1"], "--health-every must be an int >= 0"),
    (["--health-samples", "1"], "--health-samples must be an int >= 2"),
])
def test_bad_profiling_options_are_refused_naming_the_option(args, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(["--preset", "demo", *args])


def test_a_run_becomes_a_record_that_render_reads(profiled, tmp_path, capsys):
    from benchmarks import record_run
    from benchmarks.records import read

    out, _ = profiled
    path = tmp_path / "train-run.json"
    assert record_run.main([str(out), "--out", str(path)]) == 0
    rec = read(str(path))
    assert rec.benchmark == "train_run" and [r["step"] for r in rec.results] == [4, 8, 12]
    assert rec.extra["summary"]["backend"] == "sparse" and rec.extra["profile"]["categories"]
    assert record_run.main([str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2  # not a run: named, exit 2
    assert "summary.json" in capsys.readouterr().err
