"""torchgeo's MMEarth files both ways: files made by the rules of torchgeo's fixture generator load here by default
(all three variants, through the cache too, their multi-hot biome / eco-region rows as label distributions, or
refused with --label-policy strict) and train for a few steps on CPU; and torchgeo's own MMEarth dataset reads our
synthetic directory."""

import json
import os

import h5py
import numpy as np
import pytest
import torch

import train.loop as trainer
from train.config import TrainConfig
from train.data import DataError, MMEarthDataset
from train.data.cache import build_cache
from train.data.modalities import S2_USED
from train.data.synthetic import write_dataset

from _torchgeo_files import TILES, VARIANTS, write_torchgeo_style

MULTI_HOT = pytest.mark.filterwarnings("ignore:.*rows that mark several classes:UserWarning")


@MULTI_HOT
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_torchgeo_style_files_load_directly_and_through_the_cache(tmp_path, variant):
    stem = write_torchgeo_style(tmp_path, variant)
    px = VARIANTS[variant][1]
    crop = 112 if px == 128 else 56
    direct = MMEarthDataset(stem, split="train", crop=crop, seed=1)
    cached = MMEarthDataset(stem, split="train", crop=crop, seed=1, cache=build_cache(stem, str(tmp_path / "cache")))
    idx = list(range(TILES))
    a, b = direct.read_batch(idx), cached.read_batch(idx)
    assert a["input"].shape == (TILES, 12, crop, crop) and a["month"].dtype == torch.float32
    for k in a:
        assert torch.equal(a[k].nan_to_num(), b[k].nan_to_num()), k
    # the tile id is the first metadata field (meta_id): the L2A flags come from the tile info by that id
    with h5py.File(stem + ".h5") as f:
        meta = f["metadata"][:]
        rows = {name: f[name][:] for name in ("biome", "eco_region")}
    info = json.load(open(stem + "_tile_info.json"))
    want = np.array([info[m["meta_id"].decode()]["S2_type"] == "l2a" for m in meta])
    assert (direct.h5.l2a(np.arange(TILES)) == want).all()
    # their biome / eco-region rows mark every class or none: a uniform label distribution, or unlabelled
    for name, raw in rows.items():
        marked = raw.sum(1) > 0
        assert marked.any() and (raw[marked] == 1).all(), "the generator's multi-hot rows"
        k = raw.shape[1]
        assert torch.equal(a[name][torch.from_numpy(marked)], torch.full((int(marked.sum()), k), 1 / k))
        assert (a[name][torch.from_numpy(~marked)] == 0).all()
    # the val and test splits are empty: they read as 0 rows
    assert len(MMEarthDataset(stem, split="val", crop=crop)) == len(MMEarthDataset(stem, split="test")) == 0


def test_torchgeo_style_rows_are_read_with_a_notice_and_refused_when_strict(tmp_path):
    stem = write_torchgeo_style(tmp_path, "MMEarth64")
    with pytest.warns(UserWarning, match=r"modality '(biome|eco_region)' has rows that mark several classes .*"
                                         r"read as label distributions .*--label-policy soft"):
        MMEarthDataset(stem, split="train").read_batch(list(range(TILES)))
    with pytest.raises(DataError, match=r"modality '(biome|eco_region)', row \d+: a one-hot row with (14|846) non-zero "
                                        r"entries.*--label-policy strict"):
        MMEarthDataset(stem, split="train", label_policy="strict").read_batch(list(range(TILES)))


@MULTI_HOT
@pytest.mark.parametrize("variant", [v if v == "MMEarth64" else pytest.param(v, marks=pytest.mark.slow)
                                     for v in VARIANTS])
def test_torchgeo_style_files_train_a_few_steps_on_cpu(tmp_path, variant):
    """The trainer reads them as they are (default options) and trains: finite losses, the biome and eco-region
    heads learning from the soft targets."""
    stem = write_torchgeo_style(tmp_path, variant)
    crop, patch = (56, 8) if variant == "MMEarth64" else (16, 8)  # MMEarth64's geometry; small crops for speed
    out = tmp_path / "run"
    res = trainer.pretrain(TrainConfig(data=stem, out=str(out), crop=crop, patch_size=patch, batch_size=4, steps=3,
                                       lr=1e-4, warmup_steps=1, log_every=1, ckpt_every=3, png_every=0, decoder_dim=16,
                                       init="standard", progress=False, workers=0, device="cpu"))
    assert res["step"] == 3 and all(np.isfinite(res["losses"]))
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert np.isfinite(list(r["losses"].values())).all()
        assert 0 < r["losses"]["biome"] < 2 * np.log(14) and 0 < r["losses"]["eco_region"] < 2 * np.log(846)


def _torchgeo():
    if os.environ.get("MMEARTH_REQUIRE_INTEROP"):
        import torchgeo.datasets as tg  # CI: a missing torchgeo is a failure, not a skip
    else:
        tg = pytest.importorskip("torchgeo.datasets", reason="torchgeo is not installed (CI installs it)")
    return tg


def test_torchgeo_reads_our_synthetic_directory(tmp_path):
    tg = _torchgeo()
    dirname = VARIANTS["MMEarth64"][0]
    stem = write_dataset(str(tmp_path / dirname), tiles=12, size=64, seed=5, stem=dirname, quiet=True,
                         splits=(1.0, 0.0, 0.0))
    theirs = tg.MMEarth(str(tmp_path), subset="MMEarth64")  # every modality, as torchgeo defaults
    ours = MMEarthDataset(stem, split="train")
    assert len(theirs) == len(ours) == 12
    with h5py.File(stem + ".h5") as f:
        raw_s2 = f["sentinel2"][:]
        ids = [t.decode() for t in f["metadata"]["tile_id"]]
    for i in (0, 7):
        s = theirs[i]
        row = int(ours.rows[i])
        assert s["tile_id"] == ids[row]
        for key in ("mask_sentinel2_cloudmask", "mask_sentinel2_cloudprod", "mask_sentinel2_scl",
                    "image_sentinel1_asc"):
            assert key in s, key
        # both z-score S2 with the tile's L1C/L2A statistics: equal wherever the pixel holds data
        valid = raw_s2[row][list(S2_USED)] != 0
        got = s["image_sentinel2"][list(S2_USED)].numpy()
        want = ours[i]["input"].numpy()
        np.testing.assert_allclose(got[valid], want[valid], rtol=1e-5, atol=1e-5)
