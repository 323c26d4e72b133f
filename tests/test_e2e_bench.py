"""The end-to-end benchmark's plumbing in smoke mode (numbers meaningless): every output is written,
ratios are taken against dense in the same run, --compare, the scaling fit, profile mode, bad options."""

import json
import os

import pytest

from benchmarks import e2e


def test_linear_fit_recovers_a_line():
    fit = e2e.linear_fit([0.0, 0.5, 1.0], [10.0, 20.0, 30.0])
    assert fit["intercept"] == pytest.approx(10) and fit["slope"] == pytest.approx(20) and fit["r2"] == 1


@pytest.mark.parametrize("name, want", [("dense", ("dense", "auto", False)),
                                        ("sparse-cpu", ("sparse", "cpu", False)),
                                        ("sparse-compiled", ("sparse", "auto", True)),
                                        ("minkowski", ("minkowski", "auto", False))])
def test_backend_names(name, want):
    assert e2e.parse_backend(name) == want


def test_smoke_grid_writes_json_markdown_plots_and_compares(tmp_path):
    args = ["--smoke", "--out", str(tmp_path), "--name", "a", "--backends", "dense,sparse", "--mask-ratios", "0,0.6",
            "--no-isolate"]
    doc = e2e.main(args)
    ctx = doc["context"]
    assert ctx["device"] == "cpu" and ctx["torch"] and ctx["git"] and ctx["options"]["batch"] == 2
    rows = doc["results"]
    assert len(rows) == 4 and all(r["ms_step"] > 0 and r["img_s"] > 0 for r in rows)
    for r in rows:  # every ratio is against dense at the same mask ratio, from this run
        dense = next(d for d in rows if d["backend"] == "dense" and d["mask_ratio"] == r["mask_ratio"])
        assert r["speedup_vs_dense"] == pytest.approx(dense["ms_step"] / r["ms_step"])
    assert [f["backend"] for f in doc["scaling"]] == ["sparse"] and doc["scaling"][0]["points"] == 2
    for suffix in (".json", ".md", "-throughput.png"):
        assert os.path.getsize(tmp_path / f"a{suffix}") > 0
    assert json.load(open(tmp_path / "a.json"))["results"][0]["backend"] in ("dense", "sparse")
    md = open(tmp_path / "a.md").read()
    assert "| atto | 56/8 | fp32 | 2 | 0.6 | sparse |" in md and "python -m benchmarks.e2e" in md

    doc2 = e2e.main(["--smoke", "--out", str(tmp_path), "--name", "b", "--backends", "sparse", "--mask-ratios", "0.6",
                     "--compare", str(tmp_path / "a.json")])  # isolated (the CPU default): peak RSS measured
    assert doc2["results"][0]["peak_rss_mib"] > 0
    assert "new/old time" in open(tmp_path / "b.md").read()


def test_profile_mode_writes_a_table_and_a_chrome_trace(tmp_path):
    doc = e2e.main(["--smoke", "--profile", "--out", str(tmp_path), "--name", "p", "--backends", "sparse",
                    "--mask-ratios", "0.6"])
    p = doc["profiles"][0]
    assert os.path.getsize(p["trace"]) > 0 and json.load(open(p["trace"]))
    assert p["profiled_ms_per_step"] > 0 and p["top_ops"] and "ours (sparse dwconv, GRN)" in p["categories"]
    assert "| category | ms/step | share |" in open(tmp_path / "p-profile.md").read()


@pytest.mark.parametrize("argv, match", [(["--backends", "nope"], "unknown backend"),
                                         (["--geometries", "64/8"], "not one of"),
                                         (["--precisions", "fp16"], "not one of"),
                                         (["--mask-ratios", "1.0"], r"\[0, 1\)")])
def test_bad_options(argv, match, tmp_path):
    with pytest.raises((SystemExit, ValueError), match=match):
        e2e.main(["--smoke", "--out", str(tmp_path), *argv])


def test_minkowski_backend_in_the_grid(tmp_path):
    from mmearth_kernels.models import minkowski

    if not minkowski.available():
        pytest.skip("MinkowskiEngine is not installed: run scripts/build_minkowski.sh (CI builds it)")
    doc = e2e.main(["--smoke", "--no-isolate", "--out", str(tmp_path), "--backends", "dense,minkowski",
                    "--mask-ratios", "0.6"])
    me = next(r for r in doc["results"] if r["backend"] == "minkowski")
    assert me["ms_step"] > 0 and me["speedup_vs_dense"] > 0
