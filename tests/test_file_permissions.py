"""Everything the project writes gets the process umask's permissions (0644/0755 under 022, 0600/0700 under
077), as a plain ``open``/``mkdir`` would, while staying atomic; and a temporary whose writer died is removed
by the next write into its folder, while a live writer's temporary, anything not named as ours and symlinks
are left alone."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from train.checkpoint import save_checkpoint, trim_metrics
from train.config import TrainConfig
from train.data.cache import build_cache
from mmearth_kernels.files import (LOCK_NAME, TEMP_SUFFIX, TempDir, atomic_file, current_umask, remove_stale_temps_in,
                              write_atomically)
from train.data.synthetic import write_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UMASKS = {0o022: (0o644, 0o755), 0o077: (0o600, 0o700)}


@pytest.fixture(params=sorted(UMASKS), ids=lambda u: f"umask-{u:03o}")
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _modes_under(root) -> dict[str, int]:
    """Modes of everything below ``root`` (not ``root``: pytest makes tmp_path 0700)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for n in dirs + files:
            out[os.path.join(folder, n)] = _mode(os.path.join(folder, n))
    return out


def _expect(modes: dict[str, int], umask: int) -> None:
    fmode, dmode = UMASKS[umask]
    wrong = {p: oct(m) for p, m in modes.items() if m != (dmode if os.path.isdir(p) else fmode)}
    assert not wrong, f"under umask {umask:03o} want files {fmode:o}, folders {dmode:o}; got {wrong}"


def test_the_umask_is_read_without_changing_it(umask):
    assert current_umask() == umask
    assert os.umask(umask) == umask  # unchanged by the read


def test_write_atomically_and_atomic_file_and_tempdir(tmp_path, umask):
    write_atomically(str(tmp_path / "a.bin"), lambda f: f.write(b"x"))
    with atomic_file(str(tmp_path / "b.h5")) as tmp:
        with open(tmp, "wb") as f:  # a library opening the path itself
            f.write(b"y")
    with TempDir(str(tmp_path / "c")) as d:
        open(os.path.join(d.path, "inside.npy"), "wb").close()
        d.commit()
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.h5", "c"]
    assert os.listdir(tmp_path / "c") == ["inside.npy"]  # the lock file does not travel with the folder
    _expect(_modes_under(tmp_path), umask)


def test_weight_exports_records_and_run_summaries(tmp_path, umask):
    from benchmarks.records import new_record, write_record
    from mmearth_kernels.interop import save_file
    from train.summary import write_summary

    save_file({"w": torch.zeros(2)}, str(tmp_path / "enc.safetensors"))
    save_file({"w": torch.zeros(2)}, str(tmp_path / "enc.pth"))
    write_record(str(tmp_path / "rec.json"), new_record("x", "CPU: test", "python -m x", [{"a": 1}]))
    write_summary(str(tmp_path / "summary.json"), {"steps": 1})
    assert sorted(os.listdir(tmp_path)) == ["enc.pth", "enc.safetensors", "rec.json", "summary.json"]
    _expect(_modes_under(tmp_path), umask)


def test_a_synthetic_data_set_and_its_cache(tmp_path, umask):
    stem = write_dataset(str(tmp_path / "data"), tiles=6, size=16, seed=1, quiet=True)
    build_cache(stem, stem + "_cache")
    modes = _modes_under(tmp_path / "data")
    assert len(modes) > 10 and any(p.endswith("_cache") for p in modes)
    _expect(modes, umask)


def test_checkpoints_metrics_and_pictures(tmp_path, umask):
    from mmearth_kernels.models import MPMAE
    from mmearth_kernels.testing import training_batch
    from train.viz import save_reconstruction

    model = MPMAE("atto", img_size=16, patch_size=8, decoder_dim=16, tasks="s2", init="standard")
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(str(tmp_path / "last.pt"), model, opt, TrainConfig(), {"step": 1})
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    os.chmod(tmp_path / "metrics.jsonl", UMASKS[umask][0])  # as the trainer's open("a") makes it
    assert trim_metrics(str(tmp_path / "metrics.jsonl"), 1) == 1  # rewritten atomically
    mb = training_batch(1, 16, model.tasks)
    mask, kept = model.random_mask(1, generator=torch.Generator().manual_seed(0))
    (tmp_path / "recon").mkdir()
    save_reconstruction(str(tmp_path / "recon" / "step_000001.png"), model, mb, mask, kept)
    _expect({str(tmp_path / n): _mode(tmp_path / n) for n in ("last.pt", "metrics.jsonl")}, umask)
    _expect({"png": _mode(tmp_path / "recon" / "step_000001.png")}, umask)


# -- temporaries that outlive their writer -------------------------------------------------------------
_HOLDER = textwrap.dedent("""
    import sys, time
    from mmearth_kernels.files import TempDir, atomic_file
    kind, target = sys.argv[1], sys.argv[2]
    if kind == "file":
        with atomic_file(target) as tmp:
            print(tmp, flush=True)
            time.sleep(600)
    else:
        with TempDir(target) as d:
            print(d.path, flush=True)
            time.sleep(600)
""")


def _holder(kind, target):
    """A process in the middle of writing ``target``: returns it and its temporary's path."""
    p = subprocess.Popen([sys.executable, "-c", _HOLDER, kind, str(target)], stdout=subprocess.PIPE, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    return p, p.stdout.readline().strip()


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_live_writers_temporary_is_kept_and_a_killed_ones_removed(tmp_path, kind):
    p, tmp = _holder(kind, tmp_path / "data.h5")
    try:
        assert os.path.basename(tmp).startswith(".data.h5.") and tmp.endswith(TEMP_SUFFIX)
        assert remove_stale_temps_in(str(tmp_path)) == [] and os.path.exists(tmp), "a live writer's temporary"
        write_atomically(str(tmp_path / "other.json"), lambda f: f.write(b"{}"))  # a write beside it: no sweep
        assert os.path.exists(tmp)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert os.path.exists(tmp), "kill -9 left it behind (what this test is about)"
    assert remove_stale_temps_in(str(tmp_path)) == [tmp]
    assert sorted(os.listdir(tmp_path)) == ["other.json"]


def test_the_first_write_into_a_folder_sweeps_it(tmp_path):
    p, tmp = _holder("file", tmp_path / "last.pt")
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert os.path.exists(tmp)
    code = ("from mmearth_kernels.files import write_atomically as w; import sys; "
            "w(sys.argv[1], lambda f: f.write(b'1'))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.json")], check=True, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": REPO})
    assert sorted(os.listdir(tmp_path)) == ["x.json"]


def test_what_is_not_provably_ours_is_never_removed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    keep = {
        ".notes.abcdef.tmp": "another tool's temporary (not our suffix)",
        f"notes.abcdef{TEMP_SUFFIX}": "no leading dot",
        f".notes.ab{TEMP_SUFFIX}": "no random part",
    }
    for name in keep:
        (tmp_path / name).write_text("keep")
    os.symlink(victim, tmp_path / f".link.abcdef{TEMP_SUFFIX}")  # a symlink named as ours
    (tmp_path / f".folder.abcdef{TEMP_SUFFIX}").mkdir()  # a folder named as ours without our lock file
    (tmp_path / f".folder.abcdef{TEMP_SUFFIX}" / "data").write_text("keep")
    os.symlink(victim, tmp_path / f".folder2.abcdef{TEMP_SUFFIX}")
    before = sorted(os.listdir(tmp_path))
    assert remove_stale_temps_in(str(tmp_path)) == []
    assert sorted(os.listdir(tmp_path)) == before and victim.read_text() == "mine"


def test_a_dir_holding_a_symlinked_lock_is_not_ours(tmp_path):
    d = tmp_path / f".cache.abcdef{TEMP_SUFFIX}"
    d.mkdir()
    (tmp_path / "elsewhere").write_text("x")
    os.symlink(tmp_path / "elsewhere", d / LOCK_NAME)
    assert remove_stale_temps_in(str(tmp_path)) == [] and d.exists()


_LOOP = textwrap.dedent("""
    import os, sys
    from mmearth_kernels.files import write_atomically
    target, i = sys.argv[1], 0
    print("started", flush=True)
    while True:
        i += 1
        write_atomically(target, lambda f: [f.write(str(i).encode() * 4096) for _ in range(64)])
""")


def test_kill_9_at_random_points_of_a_write_loop(tmp_path):
    """A writer killed anywhere leaves the previous complete file (or none) and at most its temporary, which
    the next writer removes."""
    target = tmp_path / "out.bin"
    rng = __import__("random").Random(0)
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-c", _LOOP, str(target)], stdout=subprocess.PIPE, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONPATH": REPO})
        assert p.stdout.readline().strip() == "started"
        time.sleep(rng.uniform(0.05, 0.4))
        p.send_signal(signal.SIGKILL)
        p.wait()
        if target.exists():
            data = target.read_bytes()
            assert len(data) % (64 * 4096) == 0 and len(set(data)) <= 10 and data  # one whole version
    remove_stale_temps_in(str(tmp_path))
    assert os.listdir(tmp_path) == ["out.bin"]
