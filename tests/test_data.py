"""MMEarth data: decoding of every modality, the no-data policy, crops, L1C/L2A statistics, the
fast cache, DataLoader workers, and every bad-input case (clear errors, nothing overwritten)."""

import json
import os

import h5py
import numpy as np
import pytest
import torch

from train.data import DataError, MMEarthDataset, normalize_batch
from train.data.cache import build_cache
from train.data.modalities import ESA_CODES, MODALITIES, S2_BANDS, S2_QUALITY
from train.data.synthetic import write_dataset

from _data_files import copy_dataset

TILES, SIZE = 40, 64


@pytest.fixture(scope="module")
def stem(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("mmearth")), tiles=TILES, size=SIZE, seed=3, quiet=True,
                         splits=(0.5, 0.25, 0.25))


_copy = copy_dataset


def _raw(stem, name, row):
    with h5py.File(stem + ".h5") as f:
        return f[name][row]


def _stats(stem):
    with open(stem + "_band_stats.json") as f:
        return json.load(f)


def _tile_type(stem, row):
    with open(stem + "_tile_info.json") as f:
        info = json.load(f)
    return info[_raw(stem, "metadata", row)["tile_id"].decode()]["S2_type"]


def test_files_have_upstream_layout(stem):
    with h5py.File(stem + ".h5") as f:
        for name, m in MODALITIES.items():
            d = f[name]
            assert d.dtype == m.dtype and d.shape[:2] == (TILES, m.channels)
            assert d.compression == "gzip" and d.chunks == (1,) + d.shape[1:]
        assert f["metadata"].dtype.names == ("tile_id", "S2_type")
    s = _stats(stem)
    assert len(s["sentinel2_l1c"]["mean"]) == 13 and len(s["sentinel1"]["std"]) == 8
    types = {_tile_type(stem, r) for r in range(TILES)}
    assert types == {"l1c", "l2a"}


def test_quality_layers_and_b10_as_in_the_real_files(stem):
    """The S2 quality layers the real files carry (torchgeo reads them by default), no-data on L1C tiles for the
    L2A-only ones; B10 of L2A tiles is 0 (L2A has no B10)."""
    l2a = np.array([_tile_type(stem, r) == "l2a" for r in range(TILES)])
    with h5py.File(stem + ".h5") as f:
        for name, m in S2_QUALITY.items():
            assert f[name].dtype == m.dtype and f[name].shape == (TILES, 1, SIZE, SIZE), name
        b10 = f["sentinel2"][:, 10]
        prob, scl, qa = f["sentinel2_cloudprod"][:], f["sentinel2_scl"][:], f["sentinel2_cloudmask"][:]
    assert (b10[l2a] == 0).all() and (b10[~l2a] > 0).any(axis=(1, 2)).all()  # L1C: zero only in no-data stripes
    assert (prob[~l2a] == 65535).all() and (scl[~l2a] == 255).all()
    assert (prob[l2a] <= 100).all() and set(np.unique(scl[l2a])) <= {4, 5, 6, 9, 11}
    assert set(np.unique(qa)) <= {0, 1024}
    assert len(_stats(stem)["sentinel2_cloudmask"]["mean"]) == 1


def test_multi_hot_biome_rows_by_label_policy(stem, tmp_path):
    """A row marking two biomes: soft (the default) reads it as half on each, saying so once; strict refuses it,
    naming the file, the modality, the row and the option."""
    d = _copy(stem, tmp_path)

    def two_biomes(f):
        row = f["biome"][2]
        row[(np.argmax(row) + 1) % len(row)] = 1
        f["biome"][2] = row

    _edit_h5(d + ".h5", two_biomes)
    split = next(k for k in ("train", "val", "test") if 2 in MMEarthDataset(d, split=k).rows)
    ds = MMEarthDataset(d, split=split)
    rows, pos = list(range(len(ds))), list(ds.rows).index(2)
    with pytest.warns(UserWarning, match=r"modality 'biome' has rows that mark several classes .*label-policy soft"):
        got = ds.read_batch(rows)["biome"]
    want = torch.from_numpy(_raw(d, "biome", 2).astype(np.float32))
    assert torch.equal(got[pos], want / 2) and (want > 0).sum() == 2
    strict = MMEarthDataset(d, split=split, label_policy="strict")
    with pytest.raises(DataError, match=r"d.h5: modality 'biome', row 2: a one-hot row with 2 non-zero entries.*"
                                        r"--label-policy strict"):
        strict.read_batch(rows)
    assert strict.read_batch([i for i in rows if i != pos])["biome"].shape[0] == len(rows) - 1


def test_every_modality_decodes(stem):
    ds = MMEarthDataset(stem, split="train")
    s = _stats(stem)
    for i in range(3):
        row = int(ds.rows[i])
        sample = ds[i]
        assert sample["index"] == row
        # S2: 12 bands in file order without B10 (B8A before B8), z-scored with the tile's L1C/L2A stats
        key = "sentinel2_" + _tile_type(stem, row)
        raw = _raw(stem, "sentinel2", row).astype(np.float64)
        keep = [b for b in range(13) if S2_BANDS[b] != "B10"]
        assert [S2_BANDS[b] for b in keep][7:9] == ["B8A", "B8"]
        mean, std = np.array(s[key]["mean"])[keep], np.array(s[key]["std"])[keep]
        want = (raw[keep] - mean[:, None, None]) / std[:, None, None]
        want[raw[keep] == 0] = np.nan
        np.testing.assert_allclose(sample["sentinel2"].numpy(), want, rtol=1e-5, atol=1e-5)
        # continuous: z-score per channel, no-data -> NaN
        for name in ("sentinel1", "aster", "canopy_height_eth", "era5", "lat", "lon", "month"):
            m = MODALITIES[name]
            r = _raw(stem, name, row).astype(np.float64)
            mean, std = np.array(s[name]["mean"]), np.array(s[name]["std"])
            shape = (-1,) + (1,) * (r.ndim - 1)
            want = (r - mean.reshape(shape)) / std.reshape(shape)
            bad = ~np.isfinite(r)
            for nd in m.no_data:
                bad |= r == nd
            want[bad] = np.nan
            np.testing.assert_allclose(sample[name].numpy(), want, rtol=1e-5, atol=1e-5, err_msg=name)
            assert torch.equal(sample[name + "_valid"], torch.from_numpy(~bad))
        # classes: DW stored 1..9 -> 0..8, 0 -> -1; ESA 10..100 -> 0..10
        dw = _raw(stem, "dynamic_world", row)[0].astype(np.int64)
        assert torch.equal(sample["dynamic_world"], torch.from_numpy(np.where(dw == 0, -1, dw - 1)))
        esa = _raw(stem, "esa_worldcover", row)[0]
        lut = {c: k for k, c in enumerate(ESA_CODES)}
        want = torch.tensor([[lut.get(int(v), -1) for v in line] for line in esa])
        assert torch.equal(sample["esa_worldcover"], want)
        # one-hot rows -> label distributions (one class: the row itself)
        for name in ("biome", "eco_region"):
            assert torch.equal(sample[name], torch.from_numpy(_raw(stem, name, row).astype(np.float32))), name
            assert sample[name].sum() == 1


def test_no_data_policy(stem):
    ds = MMEarthDataset(stem, split="train", crop=None)
    batch = ds.__getitems__(list(range(len(ds))))
    inputs = torch.stack([b["input"] for b in batch])
    assert torch.isfinite(inputs).all(), "the encoder input must never hold NaN or inf"
    s2 = torch.stack([b["sentinel2"] for b in batch])
    holes = torch.isnan(s2)
    assert holes.any(), "the synthetic data has S2 no-data stripes"
    assert (inputs[holes] == 0).all() and not torch.stack([b["sentinel2_valid"] for b in batch])[holes].any()
    s1_valid = torch.stack([b["sentinel1_valid"] for b in batch])
    assert not s1_valid[:, 2:4].all(), "HH/HV missing on most tiles -> invalid"
    assert torch.isnan(torch.stack([b["sentinel1"] for b in batch])[~s1_valid]).all()
    # ESA tree cover (class 0) survives; class targets use -1 for no data
    esa = torch.stack([b["esa_worldcover"] for b in batch])
    assert (esa == 0).any()
    for b in batch:
        assert b["input"].untyped_storage().data_ptr() != b["sentinel2"].untyped_storage().data_ptr()


def test_esa_and_dw_no_data_codes():
    raw = {"esa_worldcover": torch.tensor([[[[0, 255, 10, 100], [95, 7, 50, 10]]]], dtype=torch.uint8),
           "dynamic_world": torch.tensor([[[[0, 1, 9, 10], [5, 0, 2, 3]]]], dtype=torch.uint8)}
    out = normalize_batch(raw, torch.tensor([False]), {}, (), ("esa_worldcover", "dynamic_world"))
    assert out["esa_worldcover"].tolist() == [[[-1, -1, 0, 10], [9, -1, 4, 0]]]
    assert out["dynamic_world"].tolist() == [[[-1, 0, 8, -1], [4, -1, 1, 2]]]


def test_l1c_and_l2a_statistics_are_picked_per_tile(stem, tmp_path):
    d = _copy(stem, tmp_path)
    ds = MMEarthDataset(d, split="train")
    row = int(ds.rows[0])
    before = ds[0]["sentinel2"]
    with open(d + "_tile_info.json") as f:
        info = json.load(f)
    tid = _raw(d, "metadata", row)["tile_id"].decode()
    info[tid]["S2_type"] = "l1c" if info[tid]["S2_type"] == "l2a" else "l2a"
    with open(d + "_tile_info.json", "w") as f:
        json.dump(info, f)
    after = MMEarthDataset(d, split="train")[0]["sentinel2"]
    assert not torch.allclose(before.nan_to_num(), after.nan_to_num())


def test_random_crop_is_shared_by_modalities_and_deterministic(stem):
    full = MMEarthDataset(stem, split="train")
    ds = MMEarthDataset(stem, split="train", crop=56, seed=7)
    a, b = ds[1], ds[1]
    for k in a:
        assert torch.equal(a[k].nan_to_num(), b[k].nan_to_num()), k
    f = full[1]
    s2, s2c = f["sentinel2"].nan_to_num(9), a["sentinel2"].nan_to_num(9)
    hits = [(y, x) for y in range(9) for x in range(9) if torch.equal(s2[:, y:y + 56, x:x + 56], s2c)]
    assert len(hits) == 1
    y, x = hits[0]
    for name in ("sentinel1", "aster", "canopy_height_eth"):
        assert torch.equal(f[name][:, y:y + 56, x:x + 56].nan_to_num(), a[name].nan_to_num()), name
    for name in ("dynamic_world", "esa_worldcover"):
        assert torch.equal(f[name][y:y + 56, x:x + 56], a[name]), name
    idx = list(range(len(ds)))
    epoch0 = torch.stack([s["aster"] for s in ds.__getitems__(idx)])
    ds.set_epoch(1)
    epoch1 = torch.stack([s["aster"] for s in ds.__getitems__(idx)])
    changed = [not torch.equal(a0.nan_to_num(), a1.nan_to_num()) for a0, a1 in zip(epoch0, epoch1)]
    assert sum(changed) > len(idx) // 2, "a new epoch draws new offsets for (almost) every sample"
    # samples do not share one offset: locate each crop in its full tile
    ds.set_epoch(0)
    found = set()
    for i in range(6):
        full_s2, crop_s2 = full[i]["sentinel2"].nan_to_num(9), ds[i]["sentinel2"].nan_to_num(9)
        found |= {(y, x) for y in range(9) for x in range(9) if torch.equal(full_s2[:, y:y + 56, x:x + 56], crop_s2)}
    assert len(found) > 1


def test_cache_matches_hdf5_and_raw_path_matches(stem, tmp_path):
    cache = build_cache(stem, str(tmp_path / "cache"))
    h5 = MMEarthDataset(stem, split="val", crop=56, seed=1)
    fast = MMEarthDataset(stem, split="val", crop=56, seed=1, cache=cache)
    idx = list(range(len(h5)))
    for a, b in zip(h5.__getitems__(idx), fast.__getitems__(idx)):
        for k in a:
            assert torch.equal(a[k].nan_to_num(), b[k].nan_to_num()), k
    raw = MMEarthDataset(stem, split="val", crop=56, seed=1, cache=cache, normalize=False)
    items = raw.__getitems__(idx)
    batch = {k[4:]: torch.stack([it[k] for it in items]) for k in items[0] if k.startswith("raw_")}
    out = normalize_batch(batch, torch.stack([it["l2a"] for it in items]), raw.stats, raw.inputs, raw.targets)
    ref = h5.__getitems__(idx)
    for k in out:
        assert torch.equal(out[k].nan_to_num(), torch.stack([r[k] for r in ref]).nan_to_num()), k


def test_dataloader_workers(stem):
    ds = MMEarthDataset(stem, split="train", crop=56)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == len(ds)
    assert batches[0]["input"].shape == (8, 12, 56, 56)
    assert torch.equal(batches[0]["index"], torch.from_numpy(ds.rows[:8]))


# -- bad input --------------------------------------------------------------------------------
def _edit_h5(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


def _recreate(name, data):
    def fn(f):
        del f[name]
        f.create_dataset(name, data=data)
    return fn


BAD_H5 = {
    "missing modality": (lambda f: f.__delitem__("aster"), "modality 'aster' is missing"),
    "wrong shape": (_recreate("sentinel1", np.zeros((TILES, 7, SIZE, SIZE), np.float32)), "modality 'sentinel1' must"),
    "wrong dtype": (_recreate("aster", np.zeros((TILES, 2, SIZE, SIZE), np.float32)),
                    "'aster' must be stored as int16"),
    "wrong rows": (_recreate("era5", np.zeros((TILES - 1, 12), np.float32)), "modality 'era5' has 39 rows"),
    "month as float64": (_recreate("month", np.zeros((TILES, 2), np.float64)),
                         "'month' must be stored as float32 or int32 or int64"),
    "metadata without a string id": (_recreate("metadata", np.zeros(TILES, [("n", "i4")])), "byte string"),
}


@pytest.mark.parametrize("case", sorted(BAD_H5))
def test_bad_h5(stem, tmp_path, case):
    d = _copy(stem, tmp_path)
    edit, match = BAD_H5[case]
    _edit_h5(d + ".h5", edit)
    with pytest.raises(DataError, match=match) as e:
        MMEarthDataset(d)
    assert d + ".h5" in str(e.value)


def test_missing_files(stem, tmp_path):
    with pytest.raises(DataError, match="HDF5 file is missing"):
        MMEarthDataset(str(tmp_path / "nothing"))
    for suffix, what in (("_band_stats.json", "band statistics"), ("_splits.json", "splits"),
                         ("_tile_info.json", "tile info")):
        sub = tmp_path / suffix.strip("_.json")
        sub.mkdir()
        d = _copy(stem, sub)
        os.remove(d + suffix)
        with pytest.raises(DataError, match=f"{what} file is missing"):
            MMEarthDataset(d)


def test_stats_without_key(stem, tmp_path):
    d = _copy(stem, tmp_path)
    s = _stats(d)
    del s["sentinel2_l2a"]
    with open(d + "_band_stats.json", "w") as f:
        json.dump(s, f)
    with pytest.raises(DataError, match="sentinel2_l2a.*modality sentinel2"):
        MMEarthDataset(d)


def test_split_index_out_of_range(stem, tmp_path):
    d = _copy(stem, tmp_path)
    with open(d + "_splits.json") as f:
        sp = json.load(f)
    sp["train"].append(TILES + 5)
    with open(d + "_splits.json", "w") as f:
        json.dump(sp, f)
    with pytest.raises(DataError, match=f"lists row {TILES + 5}"):
        MMEarthDataset(d)
    with pytest.raises(DataError, match="no split 'holdout'"):
        MMEarthDataset(d, split="holdout")


def test_truncated_file(stem, tmp_path):
    d = _copy(stem, tmp_path)
    size = os.path.getsize(d + ".h5")
    with open(d + ".h5", "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(DataError, match="truncated|read failed"):
        ds = MMEarthDataset(d)
        ds.__getitems__(list(range(len(ds))))


def test_stale_and_damaged_cache(stem, tmp_path):
    d = _copy(stem, tmp_path)
    cache = build_cache(d, str(tmp_path / "cache"))
    with pytest.raises(FileExistsError):
        build_cache(d, cache)  # nothing is overwritten without overwrite=True
    with open(os.path.join(cache, "aster.npy"), "r+b") as f:
        f.truncate(1000)
    with pytest.raises(DataError, match="aster.npy: size does not match"):
        MMEarthDataset(d, cache=cache)
    build_cache(d, cache, overwrite=True)
    _edit_h5(d + ".h5", lambda f: f["era5"].__setitem__(0, np.ones(12, np.float32)))
    os.utime(d + ".h5", ns=(1, 1))
    with pytest.raises(DataError, match="stale cache"):
        MMEarthDataset(d, cache=cache)


def test_generator_never_overwrites(stem):
    with pytest.raises(FileExistsError, match="exists"):
        write_dataset(os.path.dirname(stem), tiles=TILES, size=SIZE, seed=3, quiet=True)


def test_bad_arguments(stem):
    with pytest.raises(ValueError, match="unknown modality"):
        MMEarthDataset(stem, targets=("sentinel3",))
    with pytest.raises(DataError, match=r"crop must be an int in \(0, 64\] for its 64 px tiles, got 80"):
        MMEarthDataset(stem, crop=80)
    with pytest.raises(ValueError, match="label_policy must be one of soft, strict, got 'lenient'"):
        MMEarthDataset(stem, label_policy="lenient")
    with pytest.raises(ValueError, match="input modality 'biome'"):
        MMEarthDataset(stem, inputs=("biome",))


def test_generator_cli_splits(tmp_path, capsys):
    from train.data.synthetic import main

    main([str(tmp_path), "--tiles", "10", "--size", "16", "--splits", "0.5,0,0.5"])
    with open(tmp_path / "synthetic_10_16_splits.json") as f:
        splits = json.load(f)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (5, 0, 5)
    for bad in ("0.5,0.5", "0.5,x,0.5", "0.9,0.2,0.1"):
        with pytest.raises(SystemExit):
            main([str(tmp_path / "bad"), "--tiles", "10", "--size", "16", "--splits", bad])
        assert "--splits must be" in capsys.readouterr().err


def test_read_batch_is_the_samples_stacked(stem, tmp_path):
    """The trainer reads whole batches; a plain DataLoader's samples are cut from the same batch."""
    cache = build_cache(stem, str(tmp_path / "cache"))
    for source in (None, cache):
        ds = MMEarthDataset(stem, split="train", crop=56, seed=3, cache=source)
        idx = [5, 0, 3, 3, 1]  # unsorted, with a repeat: rows come back in the order asked
        batch = ds.read_batch(idx)
        items = ds.__getitems__(idx)
        assert set(batch) == set(items[0])
        for k, v in batch.items():
            assert v.shape[0] == len(idx), k
            assert torch.equal(v.nan_to_num(), torch.stack([it[k] for it in items]).nan_to_num()), k
        assert batch["index"].tolist() == ds.rows[idx].tolist()


@pytest.mark.parametrize("listed", ["empty list", "not listed"])
def test_an_empty_val_or_test_split_reads_as_zero_rows(stem, tmp_path, listed):
    """A file whose val/test split has no rows (torchgeo's fixtures, or upstream's splits writer with the default
    train fraction 1.0) reads fine, cropped or not, through the cache too; a run that needs the split is told
    that it is empty."""
    d = copy_dataset(stem, tmp_path)
    with open(d + "_splits.json") as f:
        splits = json.load(f)
    splits["train"] += splits.pop("val")
    if listed == "empty list":
        splits["val"] = []
    with open(d + "_splits.json", "w") as f:
        json.dump(splits, f)
    cache = build_cache(d, str(tmp_path / "cache"))
    for kw in (dict(crop=56), dict(crop=None), dict(crop=56, cache=cache), dict(crop=56, normalize=False)):
        ds = MMEarthDataset(d, split="val", **kw)
        assert len(ds) == 0
        batch = ds.read_batch([])
        key = "input" if kw.get("normalize", True) else "raw_sentinel2"
        assert batch[key].shape[0] == 0 and batch[key].shape[-1] == (kw["crop"] or SIZE)
        assert list(torch.utils.data.DataLoader(ds, batch_size=4)) == []
    with pytest.raises(DataError, match=r"split 'val' is empty \(no rows; the file's splits: .*train \(\d+ rows\).*\); "
                                        r"the probe's scoring needs rows in it"):
        ds.require_rows("the probe's scoring")
    MMEarthDataset(d, split="train").require_rows("pretraining")  # has rows: no error
    with pytest.raises(DataError, match="no split 'holdout'"):
        MMEarthDataset(d, split="holdout")


def test_probe_labels_from_label_distributions():
    """The probe's biome / eco-region label: the class of a one-class row; a row marking several classes, or none,
    is not one label (unlabelled, -1), whatever the label policy made of it for pretraining."""
    from train.probe import _labels_from_targets

    rows = torch.zeros(4, 14)
    rows[0, 3] = 1
    rows[1, [2, 5]] = 0.5
    rows[3, 13] = 1
    assert _labels_from_targets({"biome": rows}, "biome").tolist() == [3, -1, -1, 13]
    assert _labels_from_targets({"biome": torch.tensor([4, -1])}, "biome").tolist() == [4, -1]
