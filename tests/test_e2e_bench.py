"""The end-to-end benchmark's plumbing in smoke mode (numbers meaningless): every output is written,
ratios are taken against dense in the same run, --compare, the scaling fit, profile mode, bad options."""

import json
import os

import pytest

from benchmarks import e2e


def test_linear_fit_recovers_a_line():
    fit = e2e.linear_fit([0.0, 0.5, 1.0], [10.0, 20.0, 30.0])
    assert fit["intercept"] == pytest.approx(10) and fit["slope"] == pytest.approx(20) and fit["r2"] == 1


@pytest.mark.parametrize("name, want", [("dense", ("dense", "auto", False, False)),
                                        ("dense-plain", ("dense-plain", "auto", False, False)),
                                        ("sparse-cpu", ("sparse", "cpu", False, False)),
                                        ("sparse-compiled", ("sparse", "auto", True, False)),
                                        ("dense-plain-compiled-graphed", ("dense-plain", "auto", True, True)),
                                        ("sparse-cuda-graphed", ("sparse", "cuda", False, True)),
                                        ("sparse-fused", ("sparse-fused", "auto", False, False)),
                                        ("sparse-fused-triton-graphed", ("sparse-fused", "triton", False, True)),
                                        ("minkowski", ("minkowski", "auto", False, False))])
def test_backend_names(name, want):
    assert tuple(e2e.parse_backend(name)) == want


def test_smoke_grid_writes_json_markdown_plots_and_compares(tmp_path):
    args = ["--smoke", "--out", str(tmp_path), "--name", "a",
            "--backends", "dense,dense-plain,sparse,sparse-fused,sparse-graphed",
            "--mask-ratios", "0,0.6", "--no-isolate", "--device", "cpu"]
    doc = e2e.main(args)
    ctx = doc["context"]
    assert ctx["device"] == "cpu" and ctx["torch"] and ctx["git"] and ctx["options"]["batch"] == "2"
    rows = doc["results"]
    timed = [r for r in rows if "ms_step" in r]
    assert len(rows) == 10 and len(timed) == 8 and all(r["ms_step"] > 0 and r["img_s"] > 0 for r in timed)
    # CUDA graphs cannot run here: listed, with the reason, not silently dropped
    assert [r["skipped"] for r in rows if "skipped" in r] == ["CUDA graphs need a CUDA device"] * 2
    for r in timed:  # every ratio is against the baseline at the same mask ratio, from this run
        for base in ("dense", "dense-plain"):
            ref = next(d for d in timed if d["backend"] == base and d["mask_ratio"] == r["mask_ratio"])
            if r is not ref:
                assert r[f"speedup_vs_{base}_same_mode"] == pytest.approx(ref["ms_step"] / r["ms_step"])
        # custom ops: GRN forward + backward in the dense decoder block; sparse adds the 12 encoder blocks' dwconv
        # and GRN, forward and backward
        assert r["ops_per_step"] > 100 and r["custom_ops_per_step"] == (2 if r["backend"].startswith("dense") else 50)
    sparse, dense = (next(r for r in timed if r["backend"] == b and r["mask_ratio"] == 0.6)
                     for b in ("sparse", "dense"))
    assert sparse["ops_per_step"] <= dense["ops_per_step"], (sparse["ops_per_step"], dense["ops_per_step"])
    host = {r["backend"]: r for r in doc["host_cost"]}
    assert set(host) == {"dense", "dense-plain", "sparse", "sparse-fused"}
    assert all(r["host_ms_b1"] > 0 for r in host.values())
    assert [f["backend"] for f in doc["scaling"]] == ["sparse", "sparse-fused"] and doc["scaling"][0]["points"] == 2
    for suffix in (".json", ".md", "-throughput.png"):
        assert os.path.getsize(tmp_path / f"a{suffix}") > 0
    assert json.load(open(tmp_path / "a.json"))["results"][0]["backend"] in ("dense", "sparse")
    md = open(tmp_path / "a.md").read()
    assert "| atto | 56/8 | fp32 | 2 | 0.6 | sparse |" in md and "python -m benchmarks.e2e" in md
    assert "| atto | 56/8 | fp32 | 2 | 0.6 | sparse-graphed | skipped: CUDA graphs need a CUDA device |" in md
    assert "host ms/step at batch 1" in md

    doc2 = e2e.main(["--smoke", "--out", str(tmp_path), "--name", "b", "--backends", "sparse", "--mask-ratios", "0.6",
                     "--no-host-cost", "--compare", str(tmp_path / "a.json"), "--device", "cpu"])  # isolated: RSS
    assert doc2["results"][0]["peak_rss_mib"] > 0
    assert "new/old time" in open(tmp_path / "b.md").read()


def test_profile_mode_writes_a_table_and_a_chrome_trace(tmp_path):
    doc = e2e.main(["--smoke", "--profile", "--out", str(tmp_path), "--name", "p", "--backends", "sparse",
                    "--mask-ratios", "0.6", "--device", "cpu"])
    p = doc["profiles"][0]
    assert os.path.getsize(p["trace"]) > 0 and json.load(open(p["trace"]))
    # the trainer's op table (train/profiling.py): the categories add up to the step
    assert p["step_ms"] > 0 and p["top_ops"] and p["categories"]["sparse dwconv"] > 0
    assert sum(p["categories"].values()) == pytest.approx(p["step_ms"], rel=0.10)
    assert "| category | ms/step | % of step | achieved GB/s |" in open(tmp_path / "p-profile.md").read()


@pytest.mark.parametrize("argv, match", [(["--backends", "nope"], "unknown backend"),
                                         (["--geometries", "64/8"], "not one of"),
                                         (["--precisions", "fp16"], "not one of"),
                                         (["--batch", "0"], "positive integers"),
                                         (["--mask-ratios", "1.0"], r"\[0, 1\)")])
def test_bad_options(argv, match, tmp_path):
    with pytest.raises((SystemExit, ValueError), match=match):
        e2e.main(["--smoke", "--out", str(tmp_path), "--device", "cpu", *argv])


def test_minkowski_backend_in_the_grid(tmp_path):
    from mmearth_kernels.models import minkowski

    if not minkowski.available():
        pytest.skip("MinkowskiEngine is not installed: run scripts/build_minkowski.sh (CI builds it)")
    doc = e2e.main(["--smoke", "--no-isolate", "--out", str(tmp_path), "--backends", "dense,minkowski",
                    "--mask-ratios", "0.6"])
    me = next(r for r in doc["results"] if r["backend"] == "minkowski")
    assert me["ms_step"] > 0 and me["speedup_vs_dense"] > 0
