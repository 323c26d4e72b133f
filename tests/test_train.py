"""The trainer: a short run writes everything, resume continues the exact loss sequence, a kill while
writing a checkpoint leaves the previous one loadable, and a non-finite loss stops with a clear message."""

import json
import os

import pytest
import torch

from train.checkpoint import load_checkpoint, save_checkpoint
from train.config import TrainConfig, parse_config
from train.data.synthetic import write_dataset
from train.loop import pretrain

from _train_helpers import train_cfg


@pytest.fixture(scope="module")
def stem(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("data")), tiles=48, size=64, seed=1, quiet=True,
                         splits=(1.0, 0.0, 0.0))


def _cfg(stem, out, **kw):
    return train_cfg(stem, out, **({"warmup_steps": 2, "png_every": 3} | kw))


def test_short_run_writes_metrics_checkpoint_and_pictures(stem, tmp_path):
    res = pretrain(_cfg(stem, tmp_path))
    assert res["step"] == 6 and all(map(lambda v: v == v, res["losses"]))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records] == [2, 4, 6]
    assert set(records[0]["losses"]) == set(records[0]["weights"]) and len(records[0]["losses"]) == 12
    assert records[0]["img_per_s"] > 0 and "data_s" in records[0] and "compute_s" in records[0]
    assert sorted(os.listdir(tmp_path / "recon")) == ["step_000003.png", "step_000006.png"]
    ck = load_checkpoint(str(tmp_path / "last.pt"))
    assert ck["step"] == 6 and ck["config"]["batch_size"] == 4


def test_resume_reproduces_the_uninterrupted_run(stem, tmp_path):
    full = pretrain(_cfg(stem, tmp_path / "a", steps=8))["losses"]
    first = pretrain(_cfg(stem, tmp_path / "b", steps=8, stop_after=3))["losses"]
    rest = pretrain(_cfg(stem, tmp_path / "b", steps=8, resume="auto"))["losses"]
    assert len(first) == 3 and len(rest) == 5
    assert first + rest == full  # bit-identical on CPU


def test_kill_during_checkpoint_write_keeps_the_previous_one(stem, tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, model, opt, TrainConfig(), {"step": 1, "epoch": 0, "position": 1})
    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes half a file, then the process "dies"
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, opt, TrainConfig(), {"step": 2, "epoch": 0, "position": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]  # the half-written temporary file is gone too


def test_non_finite_loss_stops_with_a_clear_message(stem, tmp_path):
    cfg = _cfg(stem, tmp_path, lr=1e30, warmup_steps=0, steps=20, png_every=0)
    from train.loop import NonFiniteLoss

    with pytest.raises(NonFiniteLoss, match=r"non-finite loss at step \d+ \(task\(s\): .+\); diagnostic checkpoint"):
        pretrain(cfg)
    assert any(n.startswith("nonfinite-step") for n in os.listdir(tmp_path))


def test_cli_presets_and_overrides():
    cfg = parse_config(["--preset", "demo", "--batch-size", "8", "--no-progress"])
    assert cfg.model == "atto" and cfg.steps == 200 and cfg.batch_size == 8 and cfg.progress is False
    assert parse_config(["--preset", "mmearth-atto-112"]).crop == 112
    with pytest.raises(SystemExit):
        parse_config(["--preset", "nope"])
