"""torchgeo's MMEarth files both ways: files made as torchgeo's fixture generator makes them load here (all three
variants, through the cache too), and torchgeo's own MMEarth dataset reads our synthetic directory."""

import json
import os

import h5py
import numpy as np
import pytest
import torch

from train.data import MMEarthDataset
from train.data.cache import build_cache
from train.data.modalities import S2_USED
from train.data.synthetic import write_dataset

from _torchgeo_files import TILES, VARIANTS, write_torchgeo_style


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
    info = json.load(open(stem + "_tile_info.json"))
    want = np.array([info[m["meta_id"].decode()]["S2_type"] == "l2a" for m in meta])
    assert (direct.h5.l2a(np.arange(TILES)) == want).all() and want.any() and not want.all()


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
