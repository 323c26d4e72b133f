"""Malformed MMEarth side files, statistics, splits, tile info and HDF5 objects give a DataError naming the
file; the cache catches an in-place edit even with the mtime put back, and never removes a folder that is
not a cache; an interrupted synthetic write recovers, anyone else's files are left alone."""

import json
import os

import h5py
import numpy as np
import pytest

from train.data import MMEarthDataset
from train.data.cache import MARKER, build_cache
from train.data.reader import DataError
from train.data.synthetic import INCOMPLETE, write_dataset

from _data_files import copy_dataset

TILES, SIZE = 24, 16


@pytest.fixture(scope="module")
def stem(tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("mmearth")), tiles=TILES, size=SIZE, seed=8, quiet=True,
                         splits=(0.5, 0.25, 0.25))


_copy = copy_dataset


def _json(path, fn):
    with open(path) as f:
        obj = json.load(f)
    obj = fn(obj)
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


def _set(obj, *keys_value):
    *keys, value = keys_value
    d = obj
    for k in keys[:-1]:
        d = d[k]
    d[keys[-1]] = value
    return obj


def _first_tile(d):
    with open(d + "_tile_info.json") as f:
        return next(iter(json.load(f)))


SIDE = {
    "stats not JSON": ("_band_stats.json", lambda o: "{not json", "cannot read band statistics"),
    "stats a list": ("_band_stats.json", lambda o: [1, 2], "band statistics must be a JSON object, got a list"),
    "stats entry a number": ("_band_stats.json", lambda o: _set(o, "era5", 3), "no 'mean'/'std' for key 'era5'"),
    "stats mean strings": ("_band_stats.json", lambda o: _set(o, "era5", "mean", ["a"] * 12),
                           "'era5' are not lists of numbers"),
    "stats mean NaN": ("_band_stats.json", lambda o: _set(o, "sentinel1", "mean", [float("nan")] * 8),
                       "'sentinel1' hold NaN or inf"),
    "stats std inf": ("_band_stats.json", lambda o: _set(o, "era5", "std", [float("inf")] * 12),
                      "'era5' hold NaN or inf"),
    "stats too few channels": ("_band_stats.json", lambda o: _set(o, "aster", "mean", [0.0]), "must have 2 values"),
    "splits a list": ("_splits.json", lambda o: [0, 1], "splits must be a JSON object"),
    "split row 1.5": ("_splits.json", lambda o: _set(o, "train", [0, 1.5]), "row numbers .ints., got 1.5"),
    "split row a string": ("_splits.json", lambda o: _set(o, "train", ["3"]), "got '3'"),
    "split row bool": ("_splits.json", lambda o: _set(o, "train", [True]), "got True"),
    "split not a list": ("_splits.json", lambda o: _set(o, "train", 7), "must be a list of row numbers"),
    "split row negative": ("_splits.json", lambda o: _set(o, "train", [-1]), "lists row -1"),
    "tile info a list": ("_tile_info.json", lambda o: [], "tile info must be a JSON object"),
}


@pytest.mark.parametrize("name", sorted(SIDE))
def test_malformed_side_files(stem, tmp_path, name):
    suffix, change, match = SIDE[name]
    d = _copy(stem, tmp_path)
    _json(d + suffix, change)
    with pytest.raises(DataError, match=match) as e:
        MMEarthDataset(d)
    assert d in str(e.value)


@pytest.mark.parametrize("value, match", [("L3A", "has S2_type 'L3A'; expected l1c or l2a"),
                                          (None, "has S2_type None"), ("", "has S2_type ''")])
def test_unknown_s2_type_is_refused(stem, tmp_path, value, match):
    d = _copy(stem, tmp_path)
    _json(d + "_tile_info.json", lambda o: {k: {**v, "S2_type": value} for k, v in o.items()})
    ds = MMEarthDataset(d)
    with pytest.raises(DataError, match=match):
        ds.__getitems__([0])


def test_tile_info_entry_not_a_record(stem, tmp_path):
    d = _copy(stem, tmp_path)
    _json(d + "_tile_info.json", lambda o: {k: 3 for k in o})
    with pytest.raises(DataError, match="no S2_type for tile"):
        MMEarthDataset(d).__getitems__([0])


def test_hdf5_group_instead_of_a_dataset(stem, tmp_path):
    d = _copy(stem, tmp_path)
    with h5py.File(d + ".h5", "a") as f:
        del f["era5"]
        f.create_group("era5")
    with pytest.raises(DataError, match="'era5' is an HDF5 Group, not a dataset"):
        MMEarthDataset(d)


def test_not_an_hdf5_file(stem, tmp_path):
    d = _copy(stem, tmp_path)
    with open(d + ".h5", "wb") as f:
        f.write(b"definitely not HDF5")
    with pytest.raises(DataError, match="cannot open as HDF5"):
        MMEarthDataset(d)


def test_damaged_manifest_is_a_data_error(stem, tmp_path):
    d = _copy(stem, tmp_path)
    cache = build_cache(d, str(tmp_path / "cache"))
    for text, match in (("{broken", "damaged cache manifest"), ("[]", "not a cache manifest")):
        with open(os.path.join(cache, "manifest.json"), "w") as f:
            f.write(text)
        with pytest.raises(DataError, match=match):
            MMEarthDataset(d, cache=cache)


def test_in_place_edit_is_caught_even_with_the_mtime_restored(stem, tmp_path):
    d = _copy(stem, tmp_path)
    cache = build_cache(d, str(tmp_path / "cache"))
    st = os.stat(d + ".h5")
    with h5py.File(d + ".h5", "a") as f:
        f["era5"][0] = np.ones(12, np.float32)
    os.utime(d + ".h5", ns=(st.st_atime_ns, st.st_mtime_ns))  # as `touch -r` or rsync -t would
    assert os.path.getsize(d + ".h5") == st.st_size and os.stat(d + ".h5").st_mtime_ns == st.st_mtime_ns
    with pytest.raises(DataError, match="stale cache.*changed: ctime_ns"):
        MMEarthDataset(d, cache=cache)


def test_cache_builder_never_removes_a_folder_it_did_not_make(stem, tmp_path):
    d = _copy(stem, tmp_path)
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="is not a cache made by train.data.cache"):
        build_cache(d, str(mine), overwrite=True)
    assert (mine / "holiday.jpg").read_bytes() == b"precious"
    cache = build_cache(d, str(tmp_path / "cache"))
    assert os.path.isfile(os.path.join(cache, MARKER))
    build_cache(d, cache, overwrite=True)  # a cache of ours is rebuilt in place


def test_killed_cache_build_leaves_nothing_the_next_build_keeps(stem, tmp_path):
    d = _copy(stem, tmp_path)
    leftover = tmp_path / ".cache.abc123.tmp"  # what a kill -9 during a build leaves
    leftover.mkdir()
    (leftover / MARKER).write_text("x")
    other = tmp_path / ".cache.keepme.tmp"  # same name pattern, no marker: not ours
    other.mkdir()
    build_cache(d, str(tmp_path / "cache"))
    assert not leftover.exists() and other.exists()


def test_interrupted_synthetic_write_recovers(tmp_path):
    out = str(tmp_path / "demo")
    base = write_dataset(out, tiles=8, size=16, seed=1, quiet=True, stem="s")
    os.remove(base + ".h5")  # as if killed before the final rename: side files without the .h5 ...
    with pytest.raises(FileExistsError, match="exists; pass overwrite=True"):
        write_dataset(out, tiles=8, size=16, seed=1, quiet=True, stem="s")  # ... and no marker: not ours
    with open(base + INCOMPLETE, "w") as f:  # the marker a real interrupted write leaves
        f.write("x")
    open(os.path.join(out, ".s.h5.zzzzzz.tmp"), "w").close()
    write_dataset(out, tiles=8, size=16, seed=1, quiet=True, stem="s")
    assert sorted(os.listdir(out)) == ["s.h5", "s_band_stats.json", "s_splits.json", "s_tile_info.json"]
