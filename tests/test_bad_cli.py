"""The command lines a user reaches besides the trainer (the probe, the data tools, the end-to-end benchmark):
every mistake (a bad option value, a missing, damaged or foreign input file, an output path that cannot be
written) ends in one line naming the option and exit status 2, with no traceback; an internal error keeps its
traceback. (The trainer's: tests/test_bad_trainer_cli.py.)"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from train import probe
from train.checkpoint import save_checkpoint
from train.config import TrainConfig
from train.data import cache as cache_cli
from train.data import synthetic as synthetic_cli
from train.data.synthetic import write_dataset

from benchmarks import e2e

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _refused(capsys, fn, argv) -> str:
    """``fn(argv)`` exits 2 printing exactly one line (no traceback); returns the line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        fn(argv)
    assert e.value.code == 2, f"exit status {e.value.code!r}"
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A trainer checkpoint (atto at 16/8), an MMEarth directory of 16 px tiles, damaged files, a labelled .npz."""
    root = tmp_path_factory.mktemp("cli")
    from mmearth_kernels.models import MPMAE

    torch.manual_seed(0)
    model = MPMAE("atto", img_size=16, patch_size=8, decoder_dim=16, init="standard")
    ckpt = root / "last.pt"
    save_checkpoint(str(ckpt), model, torch.optim.AdamW(model.parameters()),
                    TrainConfig(crop=16, patch_size=8, decoder_dim=16, init="standard"),
                    {"step": 1, "epoch": 0, "position": 1, "world": 1})
    good = ckpt.read_bytes()
    f = {"ckpt": str(ckpt), "stem": write_dataset(str(root / "data"), tiles=12, size=16, seed=1, quiet=True,
                                                   splits=(0.5, 0.25, 0.25))}
    for name, data in (("random.pt", os.urandom(4096)), ("truncated.pt", good[: len(good) // 2]), ("empty.pt", b""),
                       ("random.h5", os.urandom(4096)), ("random.npz", os.urandom(512))):
        (root / name).write_bytes(data)
        f[name] = str(root / name)
    torch.save({"stem.conv.weight": torch.zeros(1)}, root / "export.pt")
    f["export.pt"] = str(root / "export.pt")
    ck = torch.load(ckpt, weights_only=True)
    del ck["config"]["patch_size"]
    torch.save(ck, root / "noconfig.pt")
    f["noconfig.pt"] = str(root / "noconfig.pt")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 12, 16, 16)).astype(np.float32)
    for name, arrays in {"ok.npz": dict(x=x, y=rng.integers(0, 3, 8)), "no_y.npz": dict(x=x),
                         "rgb.npz": dict(x=x[:, :3], y=rng.integers(0, 3, 8)),
                         "float_y.npz": dict(x=x, y=rng.random(8)),
                         "unlabelled.npz": dict(x=x, y=np.full(8, -1)),
                         "bad_split.npz": dict(x=x, y=rng.integers(0, 3, 8), split=np.full(8, 5))}.items():
        np.savez(root / name, **arrays)
        f[name] = str(root / name)
    d = root / "empty"  # a copy of the data whose train split is empty
    d.mkdir()
    for suffix in (".h5", "_band_stats.json", "_tile_info.json"):
        (d / f"e{suffix}").write_bytes(open(f["stem"] + suffix, "rb").read())
    (d / "e_splits.json").write_text(json.dumps({"train": [], "val": list(range(12)), "test": []}))
    f["empty_train"] = str(d / "e")
    f["root"] = str(root)
    return f


# -- the probe -------------------------------------------------------------------------------------------
# argv with @name for the fixture's files (@root/x: a path in its folder); the checkpoint is the good one unless given
PROBE = {
    "checkpoint missing": ("--checkpoint @root/nope.pt --data @ok.npz", "--checkpoint: no file at"),
    "checkpoint random bytes": ("--checkpoint @random.pt --data @ok.npz", "--checkpoint: .*not a readable PyTorch"),
    "checkpoint truncated": ("--checkpoint @truncated.pt --data @ok.npz", "--checkpoint: .*not a readable PyTorch"),
    "checkpoint empty": ("--checkpoint @empty.pt --data @ok.npz", "--checkpoint: .*not a readable PyTorch"),
    "checkpoint a folder": ("--checkpoint @root --data @ok.npz", "--checkpoint: no file at"),
    "checkpoint an export": ("--checkpoint @export.pt --data @ok.npz", "--checkpoint .*expected a trainer checkpoint"),
    "checkpoint config lacks patch_size": ("--checkpoint @noconfig.pt --data @ok.npz",
                                           "--checkpoint .*expected a trainer checkpoint.*patch_size"),
    "data stem missing": ("--data @root/nothing", "--data: .*nothing.h5: HDF5 file is missing"),
    "data h5 random bytes": ("--data @random.h5", "--data .*random.h5: not a readable HDF5 file"),
    "data npz missing": ("--data @root/nope.npz", "--data: no file at"),
    "data npz random bytes": ("--data @random.npz", "--data .*random.npz: not a readable .npz"),
    "data npz without y": ("--data @no_y.npz", r"--data .*needs arrays 'x' \[N, C, H, W\] and 'y'"),
    "data npz of 3 channels": ("--data @rgb.npz", r"--data: split train: inputs must be \[N, 12, H, H\]"),
    "data npz fractional labels": ("--data @float_y.npz", r"--data .*y must hold integers \(class labels\)"),
    "data npz all unlabelled": ("--data @unlabelled.npz", "--data: no labelled row"),
    "data npz split 5": ("--data @bad_split.npz", r"--data .*split must be \[N\] of 0"),
    "data empty train split": ("--data @empty_train", "--data: .*split 'train' is empty .*the probe's fit needs rows"),
    "limit -1": ("--data @stem --limit -1", "--limit must be an int >= 0, got -1"),
    "limit abc": ("--data @stem --limit abc", "argument --limit: invalid int value"),
    "crop -8": ("--data @stem --crop -8", "--crop must be an int >= 0, got -8"),
    "crop 12 not a multiple of the patch": ("--data @stem --crop 12",
                                            "inputs must be .*multiple of the checkpoint's patch size 8 .--crop"),
    "crop 80 larger than the tiles": ("--data @stem --crop 80", r"--data: .*crop must be an int in \(0, 16\]"),
    "seed -1": ("--data @ok.npz --seed -1", "--seed must be an int >= 0, got -1"),
    "val-fraction 1.5": ("--data @ok.npz --val-fraction 1.5", r"--val-fraction must be .*\[0, 1\)"),
    "val-fraction nan": ("--data @ok.npz --val-fraction nan", "--val-fraction must be"),
    "wd -1": ("--data @ok.npz --wd -1", "--wd must be a finite number >= 0, got -1.0"),
    "wd inf": ("--data @ok.npz --wd inf", "--wd must be a finite number >= 0, got inf"),
    "label unknown": ("--data @stem --label soil", "argument --label: invalid choice: 'soil'"),
    "json a folder": ("--data @ok.npz --json @root", "--json .* is a folder"),
    "json in a missing folder": ("--data @ok.npz --json @root/no/r.json", "--json .*: the folder .*/no does not exist"),
    "export exists": ("--export @export.pt", "--export .*export.pt exists; not overwriting it"),
    "export in a missing folder": ("--export @root/no/enc.pt", "--export .*the folder"),
    "neither data nor export": ("", "--data is required .or --export."),
}


def _argv(files, spec: str) -> list[str]:
    out = []
    for tok in spec.split():
        if tok.startswith("@"):
            key, _, rest = tok[1:].partition("/")
            tok = files[key] + ("/" + rest if rest else "")
        out.append(tok)
    return out if "--checkpoint" in out else ["--checkpoint", files["ckpt"], *out]


@pytest.mark.parametrize("name", sorted(PROBE))
def test_probe_mistakes(files, capsys, name):
    spec, match = PROBE[name]
    line = _refused(capsys, probe.main, _argv(files, spec))
    assert re.search(match, line), line


def test_probe_internal_errors_keep_their_traceback(files, monkeypatch):
    def bug(*a, **k):
        raise RuntimeError("an internal error")

    monkeypatch.setattr(probe, "probe", bug)
    with pytest.raises(RuntimeError, match="an internal error"):
        probe.main(["--checkpoint", files["ckpt"], "--data", files["ok.npz"]])


# -- the data tools --------------------------------------------------------------------------------------
SYNTHETIC = {
    "tiles 0": (["--tiles", "0"], "--tiles must be an int >= 1, got 0"),
    "tiles -5": (["--tiles", "-5"], "--tiles must be an int >= 1, got -5"),
    "tiles abc": (["--tiles", "abc"], "argument --tiles: invalid int value"),
    "size 4": (["--size", "4"], "--size must be an int >= 8, got 4"),
    "seed -1": (["--seed", "-1"], "--seed must be an int >= 0, got -1"),
    "splits of two": (["--splits", "0.5,0.5"], "--splits must be three fractions"),
    "splits nan": (["--splits", "nan,0,1"], "--splits must be three fractions in"),
    "splits negative": (["--splits", "1.5,-0.5,0"], "--splits must be three fractions in"),
    "splits words": (["--splits", "a,b,c"], "--splits must be three comma-separated fractions"),
    "gzip 12": (["--gzip", "12"], "argument --gzip: invalid choice"),
    "stem with a slash": (["--stem", "a/b"], "--stem must be a file name"),
}


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_data_mistakes(tmp_path, capsys, name):
    argv, match = SYNTHETIC[name]
    line = _refused(capsys, synthetic_cli.main, [str(tmp_path / "out"), "--tiles", "4", "--size", "16", *argv])
    assert re.search(match, line), line


@pytest.mark.parametrize("where, match", [
    ("a file", "OUT_DIR: .*out is a file; the output must be a folder"),
    ("under a file", "OUT_DIR .*out/deeper: Not a directory"),
    ("an existing data set", "OUT_DIR: .*s.h5 exists; pass overwrite=True .--overwrite."),
])
def test_synthetic_output_folder_mistakes(tmp_path, capsys, where, match):
    out = tmp_path / "out"
    if where == "an existing data set":
        write_dataset(str(out), tiles=4, size=16, quiet=True, stem="s")
        argv = [str(out), "--stem", "s"]
    else:
        out.write_text("not a folder")
        argv = [str(out) if where == "a file" else str(out / "deeper")]
    line = _refused(capsys, synthetic_cli.main, argv + ["--tiles", "4", "--size", "16"])
    assert re.search(match, line), line


def test_synthetic_internal_errors_keep_their_traceback(tmp_path, monkeypatch):
    def bug(*a, **k):
        raise RuntimeError("an internal error")

    monkeypatch.setattr(synthetic_cli, "generate_batch", bug)
    with pytest.raises(RuntimeError, match="an internal error"):
        synthetic_cli.main([str(tmp_path / "out"), "--tiles", "4", "--size", "16"])
    assert not [n for n in os.listdir(tmp_path / "out") if n.endswith("tmp")], "the temporary was removed"


CACHE = {
    "stem missing": (lambda f, t: [f["root"] + "/nothing", str(t / "c")], "STEM: .*nothing.h5: HDF5 file is missing"),
    "stem random bytes": (lambda f, t: [_damaged(f, t, "random"), str(t / "c")], "STEM: .*x.h5: cannot open as HDF5"),
    "stem truncated": (lambda f, t: [_damaged(f, t, "truncated"), str(t / "c")], "STEM: .*x.h5: cannot open as HDF5"),
    "stem without splits": (lambda f, t: [f["random.h5"][:-3], str(t / "c")], "STEM: .*random_splits.json: splits "
                                                                              "file is missing"),
    "cache dir exists": (lambda f, t: [f["stem"], f["random.pt"]], "CACHE_DIR: .*random.pt exists; pass overwrite"),
    "cache dir someone's folder": (lambda f, t: [f["stem"], f["root"], "--overwrite"],
                                   "CACHE_DIR: .* is not a cache made by train.data.cache"),
    "cache dir under a missing folder": (lambda f, t: [f["stem"], str(t / "no" / "c")],
                                         "CACHE_DIR .*: No such file or directory"),
    "modalities unknown": (lambda f, t: [f["stem"], str(t / "c"), "--modalities", "sentinel3"],
                           "argument --modalities: invalid choice: 'sentinel3'"),
}


def _damaged(f, t, how):
    """A copy of the data set whose .h5 is random bytes or its first third."""
    d = t / how
    d.mkdir()
    for suffix in ("_band_stats.json", "_splits.json", "_tile_info.json"):
        (d / f"x{suffix}").write_bytes(open(f["stem"] + suffix, "rb").read())
    data = open(f["stem"] + ".h5", "rb").read()
    (d / "x.h5").write_bytes(os.urandom(len(data)) if how == "random" else data[: len(data) // 3])
    return str(d / "x")


@pytest.mark.parametrize("name", sorted(CACHE))
def test_cache_tool_mistakes(files, tmp_path, capsys, name):
    make, match = CACHE[name]
    line = _refused(capsys, cache_cli.main, make(files, tmp_path))
    assert re.search(match, line), line


# -- the end-to-end benchmark ------------------------------------------------------------------------------
E2E = {
    "sizes giant": (["--sizes", "giant"], "--sizes: 'giant' is not one of atto"),
    "mask-ratios words": (["--mask-ratios", "abc"], r"--mask-ratios must be numbers in \[0, 1\)"),
    "mask-ratios 1.0": (["--mask-ratios", "1.0"], r"--mask-ratios must be numbers in \[0, 1\)"),
    "mask-ratio keeping no patch": (["--mask-ratios", "0.99"], "--mask-ratios 0.99 .*keeps no patch of the 7x7 grid"),
    "mask-ratio 0 with pixel tasks": (["--mask-ratios", "0", "--tasks", "pixel"],
                                      "--mask-ratios 0.0 with --geometries 56/8 --tasks pixel: .*objective is empty"),
    "warmup -1": (["--warmup", "-1"], "--warmup must be an int >= 0, got -1"),
    "repeats 0": (["--repeats", "0"], "--repeats must be an int >= 1, got 0"),
    "profile-steps 0": (["--profile-steps", "0"], "--profile-steps must be an int >= 1, got 0"),
    "backends empty": (["--backends", ""], "--backends: no backend given"),
    "batch words": (["--batch", "x"], "--batch must be positive integers, got 'x'"),
    "tasks unknown": (["--tasks", "soil"], "--tasks must be one of all, s2, pixel, image, got 'soil'"),
    "device tpu": (["--device", "tpu"], "--device must be auto, cpu or cuda, got 'tpu'"),
    "compare missing": (["--compare", "/nonexistent/old.json"], "--compare: no file at /nonexistent/old.json"),
}


@pytest.mark.parametrize("name", sorted(E2E))
def test_e2e_benchmark_mistakes(tmp_path, capsys, name):
    argv, match = E2E[name]
    line = _refused(capsys, e2e.main, ["--smoke", "--out", str(tmp_path), "--backends", "dense", *argv])
    assert re.search(match, line), line


@pytest.mark.parametrize("what, match", [("a file", "--out .* is a file"), ("report missing", "--report .*cannot read"),
                                         ("report not ours", "--report .*not an e2e JSON of this script")])
def test_e2e_benchmark_output_and_report_mistakes(tmp_path, capsys, what, match):
    (tmp_path / "f").write_text("[1, 2]")
    argv = {"a file": ["--out", str(tmp_path / "f")], "report missing": ["--report", str(tmp_path / "nope.json")],
            "report not ours": ["--report", str(tmp_path / "f")]}[what]
    line = _refused(capsys, e2e.main, ["--smoke", "--backends", "dense", *argv])
    assert re.search(match, line), line


# -- as real processes: the exit status and stderr a shell sees ------------------------------------------
@pytest.mark.parametrize("module, argv, needle", [
    ("train.probe", ["--checkpoint", "/nonexistent.pt", "--data", "x.npz"], "--checkpoint: no file at"),
    ("train.data.synthetic", ["OUT", "--tiles", "0"], "--tiles must be an int >= 1"),
    ("train.data.cache", ["/nonexistent/stem", "CACHE"], "STEM: /nonexistent/stem.h5: HDF5 file is missing"),
    ("benchmarks.e2e", ["--smoke", "--sizes", "giant"], "--sizes: 'giant' is not one of"),
])
def test_as_processes(tmp_path, module, argv, needle):
    argv = [str(tmp_path / a) if a.isupper() else a for a in argv]
    p = subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": REPO})
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], (p.returncode, p.stderr[-2000:])
