"""The trainer's command line (``python -m train``) with a user's mistake: impossible settings, output paths that
are files or cannot be written, negative seeds, missing, damaged or foreign data and checkpoint files. Each is
refused before any training step with one message naming the option, and no traceback; an internal error keeps
its traceback.

Each case is checked twice: the message, and the shell's view: exit status 2 and exactly one line on stderr (argparse's
own errors included: the trainer's parser reports them in one line, without the usage block)."""

import json
import os
import re
import runpy
import sys

import numpy as np
import pytest

import mmearth_kernels.models.mpmae as mpmae
from train.data.synthetic import write_dataset

from _torchgeo_files import write_torchgeo_style

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer-cli")
    stem = write_dataset(str(root / "data"), tiles=12, size=64, seed=1, quiet=True, splits=(0.5, 0.25, 0.25))
    (root / "a_file").write_text("not a folder")
    (root / "random.pt").write_bytes(os.urandom(4096))
    h5 = open(stem + ".h5", "rb").read()
    for name, content in (("random", os.urandom(len(h5))), ("truncated", h5[: len(h5) // 3])):
        d = root / name
        d.mkdir()
        for suffix in ("_band_stats.json", "_splits.json", "_tile_info.json"):
            (d / f"x{suffix}").write_bytes(open(stem + suffix, "rb").read())
        (d / "x.h5").write_bytes(content)
    empty = root / "empty"
    empty.mkdir()
    for suffix in (".h5", "_band_stats.json", "_tile_info.json"):
        (empty / f"x{suffix}").write_bytes(open(stem + suffix, "rb").read())
    (empty / "x_splits.json").write_text(json.dumps({"train": [], "val": list(range(12)), "test": []}))
    bad_splits = root / "bad_splits"
    bad_splits.mkdir()
    for suffix in (".h5", "_band_stats.json", "_tile_info.json"):
        (bad_splits / f"x{suffix}").write_bytes(open(stem + suffix, "rb").read())
    (bad_splits / "x_splits.json").write_text("{not json")
    return {"stem": stem, "root": str(root), "torchgeo": write_torchgeo_style(root / "tg", "MMEarth64")}


# option -> (argv with @stem / @root / @torchgeo, what the message must say)
CASES = {
    "batch-size 7.5": ("--batch-size 7.5", r"argument --batch-size: invalid int value: '7.5'"),
    "steps abc": ("--steps abc", r"argument --steps: invalid int value: 'abc'"),
    "mask-ratio 0.99": ("--mask-ratio 0.99", r"--mask-ratio: mask_ratio 0.99 keeps no patch of the 2x2 grid"),
    "mask-ratio 1": ("--mask-ratio 1", r"--mask-ratio: .*keeps no patch"),
    "mask-ratio 0.8 at crop 16": ("--mask-ratio 0.8", r"--mask-ratio: mask_ratio 0.8 keeps no patch .*--crop 16 / "
                                                      r"--patch-size 8"),
    "mask-ratio 0 with s2 only": ("--mask-ratio 0 --tasks s2", r"--mask-ratio: .*masks no patch .*objective is "
                                                               r"empty.*--tasks s2"),
    "mask-ratio 0 with pixel tasks": ("--mask-ratio 0 --tasks pixel", r"--mask-ratio: .*objective is empty"),
    "seed -1": ("--seed -1", r"--seed must be an int in \[0, 2\*\*63\), got -1"),
    "seed 2**63": (f"--seed {2**63}", r"--seed must be an int in \[0, 2\*\*63\)"),
    "label-policy lenient": ("--label-policy lenient", r"--label-policy must be soft or strict, got 'lenient'"),
    "tasks ','": ("--tasks ,", r"--tasks: no task given"),
    "out a file": ("--out @root/a_file", r"--out .*a_file is a file; it must be a folder"),
    "out under a file": ("--out @root/a_file/run", r"--out .*: .*a_file is a file, so the folder cannot be made"),
    "data-dir a file (demo data)": ("--data= --data-dir @root/a_file", r"--data-dir .*a_file is a file"),
    "data missing": ("--data @root/nothing", r"nothing.h5: HDF5 file is missing"),
    "data random bytes": ("--data @root/random/x", r"x.h5: cannot open as HDF5"),
    "data truncated": ("--data @root/truncated/x", r"x.h5: cannot open as HDF5"),
    "data splits not JSON": ("--data @root/bad_splits/x", r"x_splits.json: cannot read splits"),
    "data empty train split": ("--data @root/empty/x", r"split 'train' is empty"),
    "crop larger than the tiles": ("--crop 80", r"crop must be an int in \(0, 64\] for its 64 px tiles, got 80"),
    "resume missing": ("--resume @root/nope.pt", r"--resume: no checkpoint at .*nope.pt"),
    "resume random bytes": ("--resume @root/random.pt", r"random.pt is not a readable PyTorch checkpoint"),
    "label-policy strict on multi-hot rows": ("--data @torchgeo --crop 56 --label-policy strict",
                                              r"row \d+: a one-hot row with \d+ non-zero entries.*--label-policy "
                                              r"strict"),
}


def _argv(data, tmp_path, spec: str) -> list[str]:
    base = dict(data=data["stem"], out=str(tmp_path / "run"), steps="1", batch_size="2", crop="16", decoder_dim="16",
                workers="0", device="cpu", log_every="1", ckpt_every="1", png_every="0", warmup_steps="0")
    out = []
    for tok in spec.split():
        for key in ("stem", "root", "torchgeo"):
            tok = tok.replace("@" + key, data[key])
        out.append(tok)
    given = {t[2:].split("=")[0].replace("-", "_") for t in out if t.startswith("--")}
    return [f"--{k.replace('_', '-')}={v}" for k, v in base.items() if k not in given] + ["--no-progress"] + out


def _run_cli(argv, monkeypatch, capsys):
    """``python -m train ARGV`` in this process: (exit status, stderr lines, the message)."""
    monkeypatch.setattr(sys, "argv", ["python -m train", *argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        runpy.run_module("train", run_name="__main__")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    code = e.value.code
    message = "\n".join(err + ([code] if isinstance(code, str) else []))
    return code, err, message


@pytest.mark.filterwarnings("ignore:.*rows that mark several classes:UserWarning")
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_message_names_the_option_without_a_traceback(data, tmp_path, monkeypatch, capsys, name):
    spec, match = CASES[name]
    code, err, message = _run_cli(_argv(data, tmp_path, spec), monkeypatch, capsys)
    assert code not in (0, None), "refused"
    assert "Traceback" not in message
    assert re.search(match, message), message
    assert not os.path.exists(tmp_path / "run" / "last.pt"), "no training step ran"


@pytest.mark.filterwarnings("ignore:.*rows that mark several classes:UserWarning")
@pytest.mark.parametrize("name", sorted(CASES))
def test_exit_status_2_and_one_line(data, tmp_path, monkeypatch, capsys, name):
    spec, match = CASES[name]
    code, err, message = _run_cli(_argv(data, tmp_path, spec), monkeypatch, capsys)
    assert code == 2 and len(err) == 1 and re.search(match, err[0]), (code, err)


def test_out_without_write_permission(data, tmp_path, monkeypatch, capsys):
    """(Tests run as root here, whom permissions do not stop: the check's answer is simulated.)"""
    real = os.access
    locked = str(tmp_path / "locked")
    os.makedirs(locked)
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == locked else real(p, mode, **k))
    code, err, message = _run_cli(_argv(data, tmp_path, f"--out {locked}/run"), monkeypatch, capsys)
    assert re.search(r"--out .*locked/run: no permission to write in .*locked", message), message


def test_internal_errors_keep_their_traceback(data, tmp_path, monkeypatch):
    def bug(*a, **k):
        raise RuntimeError("an internal error")

    monkeypatch.setattr(mpmae.MPMAE, "forward", bug)
    monkeypatch.setattr(sys, "argv", ["python -m train", *_argv(data, tmp_path, "")])
    with pytest.raises(RuntimeError, match="an internal error"):
        runpy.run_module("train", run_name="__main__")


def test_numpy_scalars_in_a_python_config_are_plain_numbers(tmp_path):
    """A config built in Python with numpy numbers is validated as the numbers they hold and saved as plain
    ones (a checkpoint's config must load with weights_only=True)."""
    from train.config import ConfigError, TrainConfig, validate

    cfg = validate(TrainConfig(out=str(tmp_path), batch_size=np.int64(4), lr=np.float32(1e-3),
                               mask_ratio=np.float64(0.6), compile=np.bool_(False), seed=np.uint8(3)))
    assert [type(v) for v in (cfg.batch_size, cfg.lr, cfg.mask_ratio, cfg.compile, cfg.seed)] == \
        [int, float, float, bool, int]
    for field, value, match in (("batch_size", 4.0, "--batch-size must be an int, got 4.0"),
                                ("batch_size", True, "--batch-size must be an int, got True"),
                                ("lr", "0.1", "--lr must be a number, got '0.1'"),
                                ("compile", 1, "--compile must be True or False, got 1"),
                                ("tasks", ["s2"], r"--tasks must be a string, got \['s2'\]")):
        with pytest.raises(ConfigError, match=match):
            validate(TrainConfig(out=str(tmp_path), **{field: value}))
