"""kill -9 at random points leaves no temporary file behind: the trainer (``python -m train --preset demo``,
tiny, writing a checkpoint, a metrics record and a reconstruction picture every step) and the synthetic data
writer are killed several times after random delays and restarted (the trainer with ``--resume auto``); after
the last, uninterrupted run, the run folder, its pictures and the data folder hold no temporary, and what the
kills left was removed by the next start (mmearth_kernels.files: a temporary whose writer died is provably ours)."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from mmearth_kernels.files import TEMP_SUFFIX
from train.data.synthetic import write_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}


def _temps(*folders) -> list[str]:
    """Temporary files of any writer of ours, current or earlier naming (``.<name>.<random>.tmp``)."""
    out = []
    for folder in folders:
        if os.path.isdir(folder):
            out += [os.path.join(folder, n) for n in os.listdir(folder)
                    if n.endswith((TEMP_SUFFIX, ".tmp")) or ".tmp" in n]
    return out


def _trainer(stem, out, resume: bool, *more):
    argv = ["--preset", "demo", "--data", stem, "--out", str(out), "--crop", "16", "--patch-size", "8",
            "--decoder-dim", "16", "--batch-size", "4", "--steps", "400", "--warmup-steps", "1", "--log-every", "1",
            "--ckpt-every", "1", "--png-every", "1", "--workers", "0", "--device", "cpu", "--no-progress"]
    return subprocess.Popen([sys.executable, "-m", "train", *argv, *(["--resume", "auto"] if resume else []), *more],
                            cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=120.0):
    t0 = time.time()
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise AssertionError(f"the trainer ended early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        assert time.time() - t0 < timeout, f"no {path} after {timeout} s"
        time.sleep(0.02)


@pytest.mark.slow
def test_killing_the_trainer_at_random_points_leaves_no_temporary(tmp_path):
    rng = random.Random(1)
    stem = write_dataset(str(tmp_path / "data"), tiles=24, size=16, seed=0, quiet=True, splits=(1.0, 0.0, 0.0))
    out, recon = tmp_path / "run", tmp_path / "run" / "recon"
    folders = (str(out), str(recon), str(tmp_path / "data"))
    left = []
    for kill in range(5):
        p = _trainer(stem, out, resume=(out / "last.pt").exists())
        if kill == 0:
            _wait_for(stem + "_cache", p, 180)  # the first kill lands in the cache build or the first steps
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            _wait_for(out / "metrics.jsonl", p)
            steps = sum(1 for _ in open(out / "metrics.jsonl"))
            while sum(1 for _ in open(out / "metrics.jsonl")) < steps + 2 and p.poll() is None:
                time.sleep(0.02)  # running steps (each writes a checkpoint, a record and a picture)
            if kill % 2:  # in the middle of a write: as soon as a temporary shows
                while not _temps(*folders) and p.poll() is None:
                    time.sleep(0.002)
            else:  # anywhere
                time.sleep(rng.uniform(0.0, 0.5))
        p.send_signal(signal.SIGKILL)
        p.wait()
        left += _temps(*folders)
    assert left, "kills in the middle of a write leave its temporary (what this test is about)"
    p = _trainer(stem, out, True, "--stop-after", "3")  # the last run, uninterrupted: 3 more steps, then it ends
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert _temps(*folders) == [], f"left behind: {_temps(*folders)}"
    names = sorted(os.listdir(out))
    assert "last.pt" in names and "metrics.jsonl" in names and not [n for n in names if n.startswith(".")], names
    print(f"kills left {len(left)} temporaries, all removed: {sorted({os.path.basename(t) for t in left})}")


def test_killing_the_synthetic_writer_leaves_no_temporary(tmp_path):
    rng = random.Random(2)
    out = tmp_path / "data"
    argv = [sys.executable, "-m", "train.data.synthetic", str(out), "--tiles", "600", "--size", "32", "--stem", "s"]
    left = []
    for _ in range(3):
        p = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while not _temps(str(out)) and p.poll() is None and time.time() - t0 < 120:
            time.sleep(0.01)  # writing: its temporary exists
        time.sleep(rng.uniform(0.0, 0.3))
        p.send_signal(signal.SIGKILL)
        p.wait()
        left += _temps(str(out))
    assert left, "a kill while writing leaves the temporary (what this test is about)"
    subprocess.run(argv, cwd=REPO, env=ENV, check=True, capture_output=True, timeout=600)  # ends the interrupted write
    assert sorted(os.listdir(out)) == ["s.h5", "s_band_stats.json", "s_splits.json", "s_tile_info.json"]
