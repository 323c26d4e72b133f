"""The trainer's surface: every bad option is refused before anything runs, naming it; resuming refuses
foreign, damaged or mismatched checkpoints with a clear error; a kill or a full disk leaves the previous
checkpoint and no temporary file; a resumed run logs no step twice; nothing of the user's is deleted."""

import argparse
import json
import os

import pytest
import torch

import train.loop as trainer
from train.checkpoint import CheckpointError
from train.config import ConfigError, TrainConfig, parse_config
from train.data.reader import DataError
from train.data.synthetic import write_dataset
from train.files import WriteError

from _train_helpers import train_cfg

BAD_OPTIONS = {
    "--stem patch": (["--stem", "patch"], "--stem must be one of mmearth, original"),
    "--init-from without a kind": (["--init-from", "weights.pth"], "--init-from must be timm:FILE or mmearth:FILE"),
    "--init-from a missing file": (["--init-from", "timm:/nonexistent/model.safetensors"],
                                   "--init-from: no file at /nonexistent/model.safetensors .*never downloaded"),
    "--init-from timm with the mmearth stem": (["--init-from", f"timm:{__file__}"], "add --stem original"),
    "--batch-size 0": (["--batch-size", "0"], "--batch-size must be a positive int, got 0"),
    "--batch-size -4": (["--batch-size", "-4"], "--batch-size must be a positive int"),
    "--accum 0": (["--accum", "0"], "--accum must be a positive int"),
    "--log-every 0": (["--log-every", "0"], "--log-every must be a positive int"),
    "--ckpt-every 0": (["--ckpt-every", "0"], "--ckpt-every must be a positive int"),
    "--png-every -1": (["--png-every", "-1"], "--png-every must be an int >= 0"),
    "--steps -5": (["--steps", "-5"], "--steps must be an int >= 0"),
    "--stop-after -1": (["--stop-after", "-1"], "--stop-after must be an int >= 0"),
    "--warmup-steps -1": (["--warmup-steps", "-1"], "--warmup-steps must be an int >= 0"),
    "--lr -1": (["--lr", "-1"], "--lr must be a finite number >= 0"),
    "--lr nan": (["--lr", "nan"], "--lr must be a finite number >= 0"),
    "--blr 0": (["--blr", "0"], "--blr must be a finite number > 0"),
    "--weight-decay -0.1": (["--weight-decay", "-0.1"], "--weight-decay must be"),
    "--clip-grad inf": (["--clip-grad", "inf"], "--clip-grad must be a finite number"),
    "--epochs 0 without --steps": (["--epochs", "0", "--steps", "0"], "--epochs must be a finite number > 0"),
    "--mask-ratio 1.5": (["--mask-ratio", "1.5"], r"--mask-ratio must be in \[0, 1\]"),
    "--mask-ratio -0.1": (["--mask-ratio", "-0.1"], r"--mask-ratio must be in \[0, 1\]"),
    "--patch-size 12": (["--patch-size", "12"], "--patch-size must be a multiple of 8"),
    "--crop 60": (["--crop", "60"], "--crop must be a multiple of --patch-size 8"),
    "--crop 0": (["--crop", "0"], "--crop must be a positive int"),
    "--decoder-dim 0": (["--decoder-dim", "0"], "--decoder-dim must be a positive int"),
    "--workers -2": (["--workers", "-2"], "--workers must be -1"),
    "--model giant": (["--model", "giant"], "--model must be one of atto"),
    "--backend cuda": (["--backend", "cuda"], "--backend must be one of"),
    "--impl fast": (["--impl", "fast"], "--impl must be one of"),
    "--grn-stats mean": (["--grn-stats", "mean"], "--grn-stats must be one of"),
    "--decoder unet": (["--decoder", "unet"], "--decoder must be shared or per_task"),
    "--loss-weighting equal": (["--loss-weighting", "equal"], "--loss-weighting must be"),
    "--init kaiming": (["--init", "kaiming"], "--init must be mmearth or standard"),
    "--device tpu": (["--device", "tpu"], "--device must be auto, cpu or cuda"),
    "--precision fp16": (["--precision", "fp16"], "--precision fp16 is not supported"),
    "--precision fp8": (["--precision", "fp8"], "--precision must be auto, fp32 or bf16"),
    "--tasks sentinel3": (["--tasks", "sentinel3"], r"--tasks: unknown task\(s\) \['sentinel3'\]"),
}


@pytest.mark.parametrize("name", sorted(BAD_OPTIONS))
def test_bad_options_are_refused_before_anything_runs(name):
    argv, match = BAD_OPTIONS[name]
    with pytest.raises(ConfigError, match=match):
        parse_config(["--preset", "demo", *argv])


def test_the_cli_prints_the_error_without_a_traceback(capsys):
    with pytest.raises(SystemExit) as e:
        trainer.main(["--preset", "demo", "--batch-size", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "[train] error: --batch-size must be a positive int, got 0"


@pytest.fixture(scope="module")
def stem(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data")), tiles=12, size=64, seed=2, quiet=True,
                         splits=(1.0, 0.0, 0.0))


def _cfg(stem, out, **kw):
    return train_cfg(stem, out, **({"steps": 3, "log_every": 1, "ckpt_every": 2} | kw))


def test_a_batch_larger_than_the_split_is_an_error_not_a_hang(stem, tmp_path):
    with pytest.raises(ConfigError, match="--batch-size: the train split has 12 samples, fewer than one global"):
        trainer.pretrain(_cfg(stem, tmp_path, batch_size=5000))


def test_an_empty_train_split_is_an_error(stem, tmp_path):
    d = tmp_path / "d"
    empty = write_dataset(str(d), tiles=6, size=64, seed=2, quiet=True, splits=(0.0, 0.5, 0.5))
    with pytest.raises(DataError, match=r"split 'train' is empty .*pretraining \(--data\) needs rows in it"):
        trainer.pretrain(_cfg(empty, tmp_path / "o"))


def test_device_cuda_without_a_gpu_is_a_config_error(stem, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here: --device cuda is valid")
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        trainer.pretrain(_cfg(stem, tmp_path, device="cuda"))


# -- resume -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(stem, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    trainer.pretrain(_cfg(stem, out, steps=4, stop_after=2))
    return out


def _resume(stem, run, tmp_path, path, **kw):
    out = tmp_path / "resumed"
    return trainer.pretrain(_cfg(stem, out, steps=4, resume=str(path), **kw))


@pytest.mark.parametrize("change, match", [
    (dict(model="femto"), "trained with --model 'atto'; this run has --model 'femto'"),
    (dict(decoder_dim=32), "--decoder-dim 16"),
    (dict(tasks="s2"), "--tasks 'all'"),
    (dict(batch_size=2), "trained with batch_size 4; this run has batch_size 2.*--allow-resume-changes"),
    (dict(accum=2), "accum 1"),
    (dict(seed=4), "seed 3"),
])
def test_resume_refuses_changed_options(stem, run, tmp_path, change, match):
    with pytest.raises(CheckpointError, match=match):
        _resume(stem, run, tmp_path, run / "last.pt", **change)


def test_allow_resume_changes_continues_anyway(stem, run, tmp_path):
    res = _resume(stem, run, tmp_path, run / "last.pt", batch_size=2, allow_resume_changes=True)
    assert res["step"] == 4


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind, make, match", [
    ("missing", lambda p, ck: p / "nope.pt", "no checkpoint at"),
    ("random bytes", lambda p, ck: _write(p / "r.pt", os.urandom(4096)), "not a readable PyTorch checkpoint"),
    ("truncated", lambda p, ck: _write(p / "t.pt", ck[: len(ck) // 2]), "not a readable PyTorch checkpoint"),
    ("empty", lambda p, ck: _write(p / "e.pt", b""), "not a readable PyTorch checkpoint"),
    ("a list", lambda p, ck: (torch.save([1, 2], p / "l.pt"), p / "l.pt")[1], "holds a list, not a checkpoint"),
    ("a probe export", lambda p, ck: (torch.save({"stem.conv.weight": torch.zeros(1)}, p / "x.pt"), p / "x.pt")[1],
     "is a model export or a released checkpoint"),
    ("weights only", lambda p, ck: (torch.save({"model": {}}, p / "w.pt"), p / "w.pt")[1], "lacks optimizer"),
    ("upstream-style args", lambda p, ck: (torch.save({"model": {}, "args": argparse.Namespace(a=1)}, p / "u.pt"),
                                           p / "u.pt")[1], "released MMEarth/FCMAE checkpoint .* --init-from mmearth:"),
    ("args with another global", lambda p, ck: (torch.save({"model": {}, "args": argparse.Namespace(
        d=__import__("datetime").date(2024, 1, 1))}, p / "g.pt"), p / "g.pt")[1], "safe loading refuses.*datetime"),
])
def test_resume_refuses_foreign_and_damaged_files(stem, run, tmp_path, kind, make, match):
    path = make(tmp_path, (run / "last.pt").read_bytes())
    with pytest.raises(CheckpointError, match=match):
        _resume(stem, run, tmp_path, path)


def test_kill_and_resume_leaves_no_temp_and_logs_no_step_twice(stem, tmp_path):
    out = tmp_path / "k"
    trainer.pretrain(_cfg(stem, out, steps=6, stop_after=4, ckpt_every=2))
    # a kill -9 during the next checkpoint write, after two more metrics records were written
    (out / ".last.pt.k1ll3d.mmearth-tmp").write_bytes(b"half a checkpoint")  # its writer's lock died with it
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + '{"step": 6, "lo')
    trainer.pretrain(_cfg(stem, out, steps=6, resume="auto", ckpt_every=2))
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert sorted(set(os.listdir(out)) - {"tb"}) == ["last.pt", "metrics.jsonl", "summary.json"]


def test_a_full_disk_names_the_path_and_keeps_last_pt(stem, tmp_path, monkeypatch):
    out = tmp_path / "f"
    trainer.pretrain(_cfg(stem, out, steps=2, ckpt_every=1))
    before = (out / "last.pt").read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"PK partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 128 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(WriteError, match=f"could not write {out / 'last.pt'}: .*unexpected pos.*previous version"):
        trainer.pretrain(_cfg(stem, out, steps=3, ckpt_every=1, resume="auto"))
    assert (out / "last.pt").read_bytes() == before
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


def test_a_planted_symlink_is_never_followed(stem, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    for name in (f"last.pt.tmp{os.getpid()}", ".last.pt.tmp", "last.pt.tmp"):  # every name an attacker could guess
        os.symlink(victim, out / name)
    trainer.pretrain(_cfg(stem, out, steps=1))
    assert victim.read_text() == "mine"


def test_the_trainer_never_deletes_a_cache_folder_it_did_not_make(stem, tmp_path):
    d = tmp_path / "data"
    mine = write_dataset(str(d), tiles=12, size=64, seed=2, quiet=True, splits=(1.0, 0.0, 0.0))
    os.makedirs(mine + "_cache")
    (d / "synthetic_12_64_cache" / "notes.txt").write_text("my notes")
    with pytest.raises(DataError, match="is not a cache made by train.data.cache"):
        trainer.pretrain(_cfg(mine, tmp_path / "o"))
    assert (d / "synthetic_12_64_cache" / "notes.txt").read_text() == "my notes"


def test_a_damaged_cache_of_ours_is_rebuilt(stem, tmp_path, capsys):
    d = tmp_path / "data"
    mine = write_dataset(str(d), tiles=12, size=64, seed=2, quiet=True, splits=(1.0, 0.0, 0.0))
    trainer.pretrain(_cfg(mine, tmp_path / "a", steps=1))
    with open(mine + "_cache/manifest.json", "w") as f:
        f.write("{damaged")
    trainer.pretrain(_cfg(mine, tmp_path / "b", steps=1))
    assert "rebuilding the cache" in capsys.readouterr().err


def test_a_half_made_demo_folder_of_someone_else_is_left_alone(tmp_path):
    root = tmp_path / "demo"
    root.mkdir()
    (root / "synthetic_2000_64_splits.json").write_text("{}")
    with pytest.raises(DataError, match="were not made by an interrupted demo run"):
        trainer.pretrain(TrainConfig(data_dir=str(root), out=str(tmp_path / "o"), steps=1, progress=False,
                                     device="cpu"))
    assert (root / "synthetic_2000_64_splits.json").read_text() == "{}"
