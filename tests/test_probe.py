"""Feature extraction and linear probe: export, the trained weights really used, the probe fits what is
linearly separable, labelled sets from MMEarth files and from arrays, clear errors."""

import json
import os

import numpy as np
import pytest
import torch

from mmearth_kernels.models import MPMAE
from train import probe as P
from train.config import TrainConfig
from train.data.synthetic import write_dataset
from train.loop import pretrain


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    stem = write_dataset(str(root), tiles=60, size=64, seed=3, quiet=True, splits=(0.6, 0.4, 0.0))
    pretrain(TrainConfig(data=stem, out=str(root / "run"), batch_size=4, steps=3, lr=1e-3, warmup_steps=1, png_every=0,
                      progress=False, seed=1, device="cpu", health_every=0))
    return stem, str(root / "run" / "last.pt")


def test_encoder_from_checkpoint_uses_the_trained_weights(run):
    stem, ckpt = run
    ck = torch.load(ckpt, weights_only=True)
    model = MPMAE("atto", backend="dense")
    model.load_state_dict(ck["model"])
    x = torch.randn(3, 12, 56, 56, generator=torch.Generator().manual_seed(0))
    enc = P.encoder_from_checkpoint(ckpt, 56)
    with torch.no_grad():
        torch.testing.assert_close(enc(x), model.encoder(x))
        rand = P.encoder_from_checkpoint(ckpt, 56, random_init=True)(x)
    assert not torch.allclose(rand, enc(x).detach())
    torch.manual_seed(ck["config"]["seed"])  # the random baseline is the run's own starting point
    start = MPMAE("atto", tasks="all", init=ck["config"]["init"], backend="dense")
    with torch.no_grad():
        torch.testing.assert_close(rand, start.encoder(x))


def test_export_writes_dense_layouts_and_never_overwrites(run, tmp_path):
    _, ckpt = run
    out = str(tmp_path / "enc.pt")
    meta = P.export_encoder(ckpt, out, "mmearth")
    doc = torch.load(out, weights_only=True)
    assert meta["size"] == "atto" and doc["meta"]["layout"] == "mmearth"
    assert "initial_conv.0.weight" in doc["model"] and "downsample_layers.0.1.weight" in doc["model"]
    with pytest.raises(FileExistsError, match="not overwriting"):
        P.export_encoder(ckpt, out, "mmearth")


def test_linear_probe_separates_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(4, 16, generator=g)
    y = torch.randint(0, 4, (400,), generator=g)
    f = centres[y] + torch.randn(400, 16, generator=g)
    y_noisy = y.clone()
    y_noisy[:20] = -1  # unlabelled rows are ignored
    clf = P.LinearProbe().fit(f[:300], y_noisy[:300])
    assert clf.chosen_wd in P.WD_GRID
    assert clf.accuracy(f[300:], y[300:]) > 0.95
    assert clf.accuracy(f[300:], torch.randint(0, 4, (100,), generator=g)) < 0.5  # not a constant answer


def test_probe_on_an_mmearth_file_reports_every_encoder(run):
    stem, ckpt = run
    data = {s: P.load_mmearth(stem, "dominant_landcover", s, crop=32) for s in ("train", "val")}
    x, y = data["train"]
    assert x.shape[1:] == (12, 32, 32) and y.dtype == torch.int64 and (y >= 0).all() and y.max() < 11
    report = P.probe(ckpt, data)
    assert report["rows"] == {"train": len(y), "val": len(data["val"][1])}
    majority = torch.bincount(y).argmax()
    for split, (_, ys) in data.items():  # the baseline is exactly the train majority class's share of each split
        assert report["majority_class"][split] == pytest.approx(float((ys == majority).double().mean()))
    for name in ("pretrained", "random_init"):
        assert report[name]["wd"] in P.WD_GRID
        assert all(0 <= report[name][s] <= 1 for s in ("train", "val"))
        # an unpenalised bias alone reaches the majority share on train; 320 features for 36 rows do better
        assert report[name]["train"] >= report["majority_class"]["train"] - 1e-9, (name, report)


def test_elevation_band_is_the_tile_mean_of_valid_elevation():
    aster = torch.zeros(4, 2, 3, 3)
    aster[0, 0] = -2.0                              # low
    aster[1, 0] = 0.1                               # typical
    aster[2, 0] = 3.0                               # high ...
    aster[2, 0, 0, :] = float("nan")                # ... whatever the no-data pixels would have been
    aster[2, 1] = -9.0                              # slope (channel 1) is not elevation
    aster[3, 0] = float("nan")                      # no elevation at all: unlabelled
    y = P._labels_from_targets({"aster": aster}, "elevation_band")
    assert y.tolist() == [0, 1, 2, -1]


def test_empty_split_gives_no_rows_and_the_cli_skips_it(run, capsys):
    stem, ckpt = run  # made with splits (0.6, 0.4, 0.0): no test rows
    x, y = P.load_mmearth(stem, "dominant_landcover", "test")
    assert len(x) == 0 and len(y) == 0
    P.main(["--checkpoint", ckpt, "--data", stem, "--crop", "32", "--no-baseline", "--label", "elevation_band"])
    out = capsys.readouterr().out
    assert "rows train 36, val 24" in out and "test" not in out


def test_elevation_band_from_an_mmearth_file_uses_every_band(run):
    stem, _ = run
    x, y = P.load_mmearth(stem, "elevation_band", "train", crop=32)
    assert len(y) == len(x) and set(y.tolist()) <= {-1, 0, 1, 2} and len(set(y.tolist()) - {-1}) >= 2


def test_cli_on_arrays_with_and_without_split(run, tmp_path, capsys):
    _, ckpt = run
    g = np.random.default_rng(0)
    x = g.standard_normal((24, 12, 16, 16)).astype(np.float32)
    y = (x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    P.main(["--checkpoint", ckpt, "--data", str(tmp_path / "a.npz"), "--json", str(tmp_path / "r.json"),
            "--no-baseline"])
    report = json.load(open(tmp_path / "r.json"))
    assert "pretrained" in report and "random_init" not in report and set(report["rows"]) == {"train", "val"}
    assert "pretrained" in capsys.readouterr().out
    np.savez(tmp_path / "b.npz", x=x, y=y, split=np.array([0] * 16 + [2] * 8))
    assert set(P.load_arrays(str(tmp_path / "b.npz"), 0.2, 0)) == {"train", "test"}


@pytest.mark.parametrize("arrays, match", [
    (dict(x=np.zeros((4, 12, 16, 16), np.float32)), "needs arrays 'x'"),
    (dict(x=np.zeros((4, 12, 16), np.float32), y=np.zeros(4)), r"x must be \[N, C, H, W\]"),
])
def test_bad_arrays(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        P.load_arrays(str(tmp_path / "bad.npz"), 0.2, 0)


def test_bad_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="--checkpoint"):
        P.encoder_from_checkpoint(str(tmp_path / "none.pt"), 56)
    torch.save({"weights": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="expected a trainer checkpoint"):
        P.encoder_from_checkpoint(str(tmp_path / "x.pt"), 56)
    assert os.path.exists(tmp_path / "x.pt")
