"""MMEarth directories made by the rules of torchgeo's MMEarth fixture generator (its tests/data/mmearth/data.py,
read, not copied; written here independently): what a user holding torchgeo's fixtures, or files from tools that
follow them, gives our reader.

The rules, as that script behaves (not as its comments suggest):
* three variants, one folder each (MMEarth 128 px, MMEarth64 64 px, MMEarth100k 128 px), 10 tiles, every
  dataset contiguous (no chunks, no compression);
* each tile's value for a modality is drawn with ONE channel and broadcast over all its channels, and is cast
  to uint16 before it is stored (the loop reuses the channel count and dtype variables its set-up loop leaves
  behind, the last modality's: 1 and uint16). So all 13 Sentinel-2 bands are the same random plane in
  0..65534 (0 = no data), ERA5, ASTER, canopy height and Sentinel-1 (drawn in [0, 1)) are all zero, and every
  biome / eco-region row is all zeros or all ones (14 or 846 classes marked: multi-hot);
* DW labels 0..9, ESA codes with 255 (no data), the quality layers 0/1, ``sentinel2_scl`` uint16 (real: uint8);
* lat / lon: two random floats; month: int32 (real: float32), its random floats truncated to 0;
* metadata ``('meta_id', 'S10'), ('S2_type', 'S3')`` (real: ``tile_id`` S100, ``S2_type`` S10), S2_type random;
* tile info: S2_DATE, S2_type, CRS, lat, lon and a BANDS record per tile (ERA5 band names with the months);
* band statistics: mean/std/min/max random in [0, 1) for every continuous modality, the three quality layers,
  ``sentinel2`` and ``sentinel2_l1c`` / ``_l2a`` (13 each);
* splits: every tile in train, val and test empty.
"""

import json
import os

import h5py
import numpy as np

VARIANTS = {"MMEarth": ("data_1M_v001", 128), "MMEarth64": ("data_1M_v001_64", 64),
            "MMEarth100k": ("data_100k_v001", 128)}
TILES = 10
_PIXEL = {"aster": (2, np.int16), "canopy_height_eth": (2, np.int8), "dynamic_world": (1, np.uint8),
          "esa_worldcover": (1, np.uint8), "sentinel1": (8, np.float32), "sentinel2": (13, np.uint16),
          "sentinel2_cloudmask": (1, np.uint16), "sentinel2_cloudprod": (1, np.uint16),
          "sentinel2_scl": (1, np.uint16)}
_VECTOR = {"biome": (14, np.uint8), "eco_region": (846, np.uint16), "era5": (12, np.float32)}
_STATS = {"aster": 2, "canopy_height_eth": 2, "era5": 12, "sentinel1": 8, "sentinel2": 13, "sentinel2_cloudmask": 1,
          "sentinel2_cloudprod": 1, "sentinel2_scl": 1, "sentinel2_l1c": 13, "sentinel2_l2a": 13, "lat": 2, "lon": 2,
          "month": 2}
_ERA5 = ["prev_temperature_2m", "prev_temperature_2m_min", "prev_temperature_2m_max", "prev_total_precipitation_sum",
         "curr_temperature_2m", "curr_temperature_2m_min", "curr_temperature_2m_max", "curr_total_precipitation_sum",
         "0_temperature_2m_mean", "1_temperature_2m_min_min", "2_temperature_2m_max_max",
         "3_total_precipitation_sum_sum"]


def _one_channel(rng, name: str, px: int) -> np.ndarray:
    """One tile's draw for ``name``: a single channel (broadcast over the modality's channels when stored)."""
    plane = (1, px, px)
    if name == "dynamic_world":
        return rng.integers(0, 10, plane)
    if name == "esa_worldcover":
        return rng.choice([10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100, 255], plane)
    if name == "era5":
        return rng.random(1)
    if name in ("biome", "eco_region"):
        return rng.integers(0, 2, 1)
    if name == "sentinel2":
        return rng.integers(0, 65535, plane)
    if name in ("aster", "canopy_height_eth", "sentinel1"):
        return rng.random(plane)
    return rng.integers(0, 2, plane)  # the three quality layers


def write_torchgeo_style(root, variant: str, seed: int = 0) -> str:
    """``root/<dirname>/<dirname>{.h5, _band_stats.json, _splits.json, _tile_info.json}``; returns the stem."""
    dirname, px = VARIANTS[variant]
    rng = np.random.default_rng(seed)
    folder = os.path.join(str(root), dirname)
    os.makedirs(folder)
    stem = os.path.join(folder, dirname)
    info = {}
    with h5py.File(stem + ".h5", "w") as f:
        for name, (c, dt) in {**_PIXEL, **_VECTOR}.items():
            f.create_dataset(name, (TILES, c) + ((px, px) if name in _PIXEL else ()), dtype=dt)
        f.create_dataset("lat", (TILES, 2), dtype=np.float32)
        f.create_dataset("lon", (TILES, 2), dtype=np.float32)
        f.create_dataset("month", (TILES, 2), dtype=np.int32)
        f.create_dataset("metadata", (TILES,), dtype=np.dtype([("meta_id", "S10"), ("S2_type", "S3")]))
        for i in range(TILES):
            for name in {**_PIXEL, **_VECTOR}:
                f[name][i] = _one_channel(rng, name, px).astype(np.uint16)  # broadcast by h5py, as theirs
            for name in ("lat", "lon", "month"):
                f[name][i] = rng.random(2)
            kind = rng.choice(["l1c", "l2a"])
            f["metadata"][i] = (str(i).encode(), kind.encode())
            bands = {"sentinel2": ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8A", "B8", "B9", "B10", "B11", "B12"],
                     "era5": [b.replace("curr", "201807").replace("prev", "201806") for b in _ERA5]}
            info[str(i)] = {"S2_DATE": "2018-07-16", "S2_type": str(kind), "CRS": "EPSG:32721",
                            "lat": -14.499441524746077, "lon": -56.98355999998649, "BANDS": bands}
    stats = {k: {s: rng.random(c).tolist() for s in ("mean", "std", "min", "max")} for k, c in _STATS.items()}
    splits = {"train": list(range(TILES)), "val": [], "test": []}
    for suffix, obj in (("_band_stats.json", stats), ("_splits.json", splits), ("_tile_info.json", info)):
        with open(stem + suffix, "w") as f:
            json.dump(obj, f, indent=4)
    return stem
