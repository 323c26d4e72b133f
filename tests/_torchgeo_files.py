"""MMEarth directories made the way torchgeo's test-fixture generator makes them (its dtypes, field names and
file names, as described in its tests/data/mmearth/data.py; written here independently): what a user holding
torchgeo's fixtures, or files from tools that follow them, gives our reader.

Where it differs from the real MMEarth files: ``month`` is int32 (real: float32), the metadata record is
``('meta_id', 'S10'), ('S2_type', 'S3')`` (real: ``tile_id`` S100, ``S2_type`` S10) and ``sentinel2_scl`` is
uint16 (real: uint8). Biome/ecoregion rows are one-hot here: torchgeo's generator draws them as random 0/1
vectors, which our reader refuses on purpose (several ones cannot be one class).
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
_VECTOR = {"biome": (14, np.uint8), "eco_region": (846, np.uint16), "era5": (12, np.float32), "lat": (2, np.float32),
           "lon": (2, np.float32), "month": (2, np.int32)}
_STATS = {"aster": 2, "canopy_height_eth": 2, "era5": 12, "sentinel1": 8, "sentinel2": 13, "sentinel2_cloudmask": 1,
          "sentinel2_cloudprod": 1, "sentinel2_scl": 1, "sentinel2_l1c": 13, "sentinel2_l2a": 13, "lat": 2, "lon": 2,
          "month": 2}


def write_torchgeo_style(root, variant: str, seed: int = 0) -> str:
    """``root/<dirname>/<dirname>{.h5, _band_stats.json, _splits.json, _tile_info.json}``; returns the stem."""
    dirname, px = VARIANTS[variant]
    rng = np.random.default_rng(seed)
    folder = os.path.join(str(root), dirname)
    os.makedirs(folder)
    stem = os.path.join(folder, dirname)
    types = rng.choice([b"l1c", b"l2a"], TILES)
    with h5py.File(stem + ".h5", "w") as f:
        for name, (c, dt) in _PIXEL.items():
            if name == "dynamic_world":
                data = rng.integers(0, 10, (TILES, c, px, px))
            elif name == "esa_worldcover":
                data = rng.choice([10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100, 255], (TILES, c, px, px))
            elif name == "sentinel2":
                data = rng.integers(0, 65535, (TILES, c, px, px))
            elif np.dtype(dt).kind == "f" or name in ("aster", "canopy_height_eth"):
                data = rng.random((TILES, c, px, px))
            else:
                data = rng.integers(0, 2, (TILES, c, px, px))
            f.create_dataset(name, data=data.astype(dt))
        for name, (c, dt) in _VECTOR.items():
            if name in ("biome", "eco_region"):
                data = np.eye(c, dtype=dt)[rng.integers(0, c, TILES)]
            else:
                data = rng.random((TILES, c))
            f.create_dataset(name, data=data.astype(dt))
        meta = np.array([(str(i).encode(), t) for i, t in enumerate(types)], [("meta_id", "S10"), ("S2_type", "S3")])
        f.create_dataset("metadata", data=meta)
    stats = {k: {s: (rng.random(c) + 0.1).tolist() for s in ("mean", "std", "min", "max")} for k, c in _STATS.items()}
    info = {str(i): {"S2_DATE": "2018-07-16", "S2_type": t.decode(), "CRS": "EPSG:32721", "lat": -14.5, "lon": -57.0}
            for i, t in enumerate(types)}
    for suffix, obj in (("_band_stats.json", stats), ("_splits.json", {"train": list(range(TILES)), "val": [],
                                                                        "test": []}), ("_tile_info.json", info)):
        with open(stem + suffix, "w") as f:
            json.dump(obj, f)
    return stem
