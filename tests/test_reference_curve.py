"""The demo preset still trains as it did: the first steps of its loss curve, re-run here, stay within the stated band
of the committed reference (benchmarks/reference_curve.py writes it; the record holds the band). A change that
silently hurts training (a wrong gradient, a mis-scaled loss, a broken data path) moves these losses far more."""

import glob
import json
import os

import pytest

from benchmarks.reference_curve import BAND, PREFIX_STEPS, demo_argv
from train.config import parse_config
from train.loop import pretrain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _reference() -> dict:
    paths = sorted(glob.glob(os.path.join(REPO, "benchmarks", "results", "demo-curve-*.json")))
    assert paths, "no reference curve record (python -m benchmarks.reference_curve writes one)"
    with open(paths[-1]) as f:
        return json.load(f)


@pytest.mark.slow
def test_the_demo_curve_prefix_stays_in_its_band(tmp_path):
    ref = _reference()
    assert ref["band"] == {"prefix_steps": PREFIX_STEPS, "relative": BAND}
    want = {r["step"]: r["loss"] for r in ref["results"] if r["step"] <= PREFIX_STEPS}
    assert len(want) >= 2, want
    cfg = parse_config(demo_argv(str(tmp_path / "run"), str(tmp_path / "data"), PREFIX_STEPS) + ["--health-every", "0"])
    pretrain(cfg)
    got = {r["step"]: r["loss"] for r in map(json.loads, open(tmp_path / "run" / "metrics.jsonl"))}
    for step, loss in want.items():
        assert got[step] == pytest.approx(loss, rel=BAND), f"step {step}: {got[step]:.4f} vs reference {loss:.4f}"
