"""``python -m benchmarks.reference_curve``: the demo preset's loss curve and the linear-probe accuracy it gives,
as a record (``benchmarks/results/demo-curve-<device>-<date>.json``), the reference a change that silently hurts
training is held against.

Runs ``python -m train --preset demo`` (200 steps of atto 56/8 on the synthetic demo data, made in ``--data-dir`` on
first use), then ``python -m train.probe`` (dominant land cover, a linear probe on 1000 + 1000 tiles of another
seed, against the same architecture at the run's own random initialisation). ``tests/test_reference_curve.py``
re-runs the curve's first ``PREFIX_STEPS`` steps and checks each logged loss is within ``BAND`` of the record's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from .record_run import run_record
from .records import write_result

PREFIX_STEPS = 20      # the steps the test re-runs
BAND = 0.02            # allowed relative difference of a logged loss (CPU ISAs and thread counts round differently)


def demo_argv(out: str, data_dir: str, steps: int | None = None) -> list[str]:
    return ["--preset", "demo", "--out", out, "--data-dir", data_dir, "--no-progress", "--device", "cpu",
            *(["--steps", str(steps)] if steps else [])]


def main(argv=None) -> int:
    from train.data.cli import ArgumentParser

    ap = ArgumentParser(prog="python -m benchmarks.reference_curve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", default="~/.cache/mmearth-kernels/demo-data", help="the demo data (made if absent)")
    ap.add_argument("--out", default=None,
                    help="the record (default: benchmarks/results/demo-curve-<device>-<date>.json)")
    args = ap.parse_args(argv)
    py = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        run, probe_set = os.path.join(tmp, "demo"), os.path.join(tmp, "probe-set")
        subprocess.run([py, "-m", "train", *demo_argv(run, os.path.expanduser(args.data_dir))], check=True)
        subprocess.run([py, "-m", "train.data.synthetic", probe_set, "--tiles", "2000", "--seed", "11", "--splits",
                        "0.5,0,0.5"], check=True)
        report = os.path.join(tmp, "probe.json")
        subprocess.run([py, "-m", "train.probe", "--checkpoint", os.path.join(run, "last.pt"), "--data",
                        os.path.join(probe_set, "synthetic_2000_64"), "--crop", "32", "--json", report], check=True)
        with open(report) as f:
            probe = json.load(f)
        rec = run_record(run)
    rec["benchmark"] = "demo_curve"
    rec["command"] = ("python -m train " + " ".join(demo_argv("OUT", args.data_dir)) + " && python -m train.probe "
                      "--checkpoint OUT/last.pt --data PROBE_SET --crop 32 (python -m benchmarks.reference_curve)")
    rec["probe"] = {k: probe[k] for k in ("pretrained", "random_init", "majority_class", "rows") if k in probe}
    rec["band"] = {"prefix_steps": PREFIX_STEPS, "relative": BAND}
    rec["notes"] = (f"The demo preset's loss per logging window; tests/test_reference_curve.py re-runs the first "
                    f"{PREFIX_STEPS} steps and holds each logged loss within {BAND:.0%} of these. Probe: dominant land "
                    "cover, linear, 1000 + 1000 tiles of seed 11, 32 px crops.")
    print(f"reference_curve: wrote {write_result(rec, 'demo-curve', args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
