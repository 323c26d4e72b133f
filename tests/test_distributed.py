"""torchrun on CPU (gloo): two processes equal one process at the same global batch, and a rank that
dies makes the whole job fail quickly instead of hanging in the next collective."""

import json
import os
import re
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch

from train.checkpoint import load_checkpoint
from train.config import TrainConfig
from train.data.synthetic import write_dataset
from train.loop import pretrain

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stem(tmp_path_factory):
    """Synthetic tiles with extra no-data on a third of them (no ERA5, half the land cover and S2 unknown),
    so the two ranks' element counts differ: plain per-rank means would then not equal the global mean."""
    stem = write_dataset(str(tmp_path_factory.mktemp("data")), tiles=40, size=64, seed=2, quiet=True,
                         splits=(1.0, 0.0, 0.0))
    with h5py.File(stem + ".h5", "r+") as f:
        rows = list(range(0, 40, 3))
        era5 = f["era5"][rows]
        era5[:] = np.nan
        f["era5"][rows] = era5
        for name in ("esa_worldcover", "dynamic_world"):
            a = f[name][rows]
            a[..., :32, :] = 0
            f[name][rows] = a
    return stem


COMMON = dict(steps=3, lr=1e-3, warmup_steps=1, log_every=1, ckpt_every=3, png_every=0, progress=False, seed=5,
              init="standard", device="cpu", health_every=0)  # gloo on CPU: the property tested is the CPU one


def _args(stem, out, **kw):
    args = []
    for k, v in (COMMON | {"data": stem, "out": str(out)} | kw).items():
        flag = "--" + k.replace("_", "-")
        args += [flag if v is not False else "--no-" + flag[2:]] if isinstance(v, bool) else [flag, str(v)]
    return args


def _torchrun(target, args, timeout, **env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *target, *args]
    full_env = os.environ | {"OMP_NUM_THREADS": "1"} | env
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_equal_one_at_the_same_global_batch(stem, tmp_path):
    one = pretrain(TrainConfig(**(COMMON | {"data": stem, "out": str(tmp_path / "one"), "batch_size": 4})))
    proc = _torchrun(["-m", "train"], _args(stem, tmp_path / "two", batch_size=2), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]
    assert [r["step"] for r in two] == [1, 2, 3]
    # the logged loss is the global-batch loss (mean of the ranks' shares); per-task losses too
    torch.testing.assert_close(torch.tensor([r["loss"] for r in two]), torch.tensor(one["losses"]),
                               rtol=1e-5, atol=1e-6)
    a = load_checkpoint(str(tmp_path / "one" / "last.pt"))["model"]
    b = load_checkpoint(str(tmp_path / "two" / "last.pt"))["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_a_rank_that_dies_fails_the_job_fast(stem, tmp_path):
    t0 = time.monotonic()
    proc = _torchrun([os.path.join(REPO, "tests", "_die_on_rank1.py")], _args(stem, tmp_path, batch_size=2, steps=6),
                     timeout=240, MMEARTH_DIST_TIMEOUT="60")
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert re.search(r"exitcode\s*:\s*7\b", proc.stderr), proc.stderr[-3000:]  # torchrun reports rank 1's code
    assert elapsed < 60, f"the job took {elapsed:.0f} s to fail after rank 1 died"
