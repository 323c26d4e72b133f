"""Synthetic MMEarth data in the exact on-disk format (HDF5 + band-stats, splits, tile-info JSON).

    python -m train.data.synthetic OUT_DIR [--tiles 2000] [--size 64] [--seed 0] [--stem NAME]

Every modality is derived from one latent scene per tile, so the pretext tasks are learnable
from Sentinel-2 and from each other: smooth elevation, moisture and urban fields decide the land
cover (Dynamic World and ESA WorldCover agree), the S2 reflectances mix per-class spectra with a
vegetation index, S1 backscatter follows vegetation and water, ASTER is the elevation and its
slope, canopy height follows the tree cover; latitude, month and moisture drive ERA5, biome and
ecoregion. Realistic no-data: HH/HV missing on most tiles, the descending orbit on some, a few
NaN ERA5 rows, a few S2 and canopy no-data pixels, a small cloud on a few tiles (in S2 and in the QA60,
cloud-probability and scene-classification layers the real files carry). About half of the tiles are L1C,
half L2A (B10 zero, as the real L2A tiles, which have no B10).
Nothing is overwritten: an existing output needs --overwrite, and files are written to a
temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .cli import ArgumentParser
from mmearth_kernels.files import WriteError, atomic_file, remove_stale_temps, write_atomically
from .modalities import BIOMES, ECOREGIONS, ESA_CODES, METADATA_DTYPE, MODALITIES, S2_QUALITY

INCOMPLETE = ".synthetic-incomplete"  # marker beside an unfinished directory

# Per land-cover class (ESA order: tree, shrub, grass, crop, built, bare, snow, water, wetland,
# mangrove, moss) a rough 13-band reflectance (x 10000), B1..B12 in file order (B8A before B8).
_SPECTRA = np.array([
    [250, 300, 500, 300, 800, 2200, 2800, 3000, 2900, 900, 10, 1500, 700],     # tree
    [350, 450, 700, 650, 1100, 1900, 2200, 2400, 2300, 800, 10, 2200, 1400],   # shrub
    [300, 400, 750, 550, 1200, 2300, 2700, 2900, 2800, 900, 10, 2400, 1400],   # grass
    [320, 420, 800, 600, 1300, 2600, 3100, 3300, 3200, 1000, 10, 2500, 1500],  # crop
    [900, 1000, 1100, 1200, 1300, 1400, 1500, 1550, 1500, 700, 10, 1900, 1700],  # built
    [1100, 1300, 1600, 1900, 2100, 2200, 2300, 2400, 2350, 1000, 10, 3200, 2800],  # bare
    [6000, 7000, 7200, 7300, 7200, 7000, 6800, 6500, 6600, 3000, 50, 700, 600],  # snow
    [400, 500, 600, 400, 300, 250, 200, 180, 170, 80, 5, 100, 60],             # water
    [300, 380, 600, 450, 900, 1600, 1900, 2000, 1950, 700, 10, 1200, 700],     # wetland
    [250, 320, 550, 350, 850, 2000, 2500, 2700, 2600, 800, 10, 1100, 500],     # mangrove
    [500, 600, 800, 800, 1100, 1500, 1700, 1800, 1750, 700, 10, 1800, 1300],   # moss
], dtype=np.float32)
_DW_OF_ESA = np.array([2, 6, 3, 5, 7, 8, 9, 1, 4, 4, 3], dtype=np.uint8)  # ESA class -> Dynamic World label (+1)


def smooth_fields(rng: np.random.Generator, tiles: int, size: int, cells: int, count: int = 1) -> np.ndarray:
    """``count`` spatially smooth fields per tile, about N(0, 1): low-res noise, bilinearly upsampled."""
    low = torch.from_numpy(rng.standard_normal((tiles, count, cells, cells), dtype=np.float32))
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False).numpy()


def _land_cover(elev, moist, urban, veg, lat):
    """ESA class index (0..10) per pixel from the latent fields (thresholds on purpose simple)."""
    cls = np.full(elev.shape, 2, dtype=np.int64)                       # grass
    cls[veg > 0.62] = 0                                                # tree
    cls[(veg > 0.45) & (veg <= 0.62) & (elev < 0.3)] = 3               # crop on low, flat-ish land
    cls[(veg > 0.3) & (veg <= 0.45)] = 1                               # shrub
    cls[veg <= 0.2] = 5                                                # bare
    cls[(moist > 0.9) & (veg > 0.5)] = 8                               # wetland
    cls[(moist > 0.9) & (veg > 0.5) & (np.abs(lat) < 25)] = 9          # mangrove (tropics)
    cls[(veg <= 0.3) & (np.abs(lat) > 55)] = 10                        # moss / lichen
    cls[urban > 1.3] = 4                                               # built
    cls[(elev > 1.6) | ((elev > 0.8) & (np.abs(lat) > 60))] = 6        # snow / ice
    cls[(moist > 1.3) & (elev < 0.5)] = 7                              # water
    return cls


def generate_batch(rng: np.random.Generator, start: int, tiles: int, size: int) -> dict[str, np.ndarray]:
    """All modalities of tiles [start, start + tiles), in stored dtypes."""
    S = size
    lat = rng.uniform(-55, 72, tiles).astype(np.float32)
    lon = rng.uniform(-180, 180, tiles).astype(np.float32)
    month = rng.integers(1, 13, tiles)
    l2a = rng.random(tiles) < 0.5
    elev_f, moist_f, urban_f, noise_f = np.split(smooth_fields(rng, tiles, S, 6, 4), 4, axis=1)
    base_elev = rng.gamma(1.5, 0.35, tiles).astype(np.float32)[:, None, None, None]
    wet = rng.normal(0, 0.6, tiles).astype(np.float32)[:, None, None, None]
    elev = base_elev + 0.35 * elev_f                                                    # ~km
    moist = 0.8 * moist_f + wet + 0.3 * np.cos(np.deg2rad(lat))[:, None, None, None]
    urban = urban_f * rng.uniform(0.3, 1.2, tiles).astype(np.float32)[:, None, None, None]
    veg = 1 / (1 + np.exp(-(1.6 * moist - 1.2 * elev + 0.3 * noise_f + 0.4)))
    cls = _land_cover(elev, moist, urban, veg, lat[:, None, None, None])[:, 0]          # (T, S, S)
    water, trees = cls == 7, cls == 0

    # Sentinel-2: class spectra, modulated by vegetation in the red-edge/NIR bands, plus noise.
    refl = _SPECTRA[cls].transpose(0, 3, 1, 2)                                          # (T, 13, S, S)
    refl = refl * (0.8 + 0.4 * veg) ** np.array([0, 0, 0, -1, 0, 1, 1, 1, 1, 1, 0, 0, 0], np.float32)[:, None, None]
    refl = refl + rng.normal(0, 40, refl.shape).astype(np.float32)
    refl[~l2a] += np.array([300, 250, 200, 150, 120, 100, 100, 90, 90, 60, 0, 40, 30], np.float32)[:, None, None]
    # A few tiles hold a small cloud (the real scenes have < 10 % cloudy pixels): bright, flat, in the masks too
    yy, xx = np.mgrid[:S, :S]
    centre = rng.uniform(0, S, (tiles, 2))
    cloud = (rng.random(tiles) < 0.1)[:, None, None] & \
        ((yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2 < (S / 8) ** 2)          # (T, S, S)
    refl = np.where(cloud[:, None], 0.3 * refl + 5000, refl)
    s2 = np.clip(refl, 1, 20000).astype(np.uint16)
    s2[l2a, 10] = 0  # L2A has no B10: zero, after the clip (which would make it 1)
    holes = rng.random(tiles) < 0.03                                                    # a few no-data stripes
    s2[holes, :, : S // 8, :] = 0

    # Sentinel-1 (dB): vegetation brightens, water darkens; HH/HV missing on most tiles.
    vv = -14 + 7 * veg[:, 0] - 9 * water + rng.normal(0, 0.8, (tiles, S, S))
    s1 = np.stack([vv, vv - 7, vv + 1, vv - 8, vv + 0.5, vv - 6.5, vv + 1.5, vv - 7.5], axis=1).astype(np.float32)
    no_hh = rng.random(tiles) < 0.9
    s1[np.ix_(no_hh, [2, 3, 6, 7])] = -np.inf
    no_desc = rng.random(tiles) < 0.2
    s1[np.ix_(no_desc, [4, 5, 6, 7])] = -np.inf

    # ASTER: elevation (m) and slope (degrees, from the elevation gradient at 10 m).
    elev_m = (elev[:, 0] * 1000).astype(np.float32)
    gy, gx = np.gradient(elev_m, axis=(1, 2))
    slope = np.degrees(np.arctan(np.hypot(gx, gy) / 10.0))
    aster = np.stack([elev_m, slope], axis=1).round().clip(-32767, 32767).astype(np.int16)

    # Canopy height (m) and its std: tall where trees are, low elsewhere; a few no-data pixels.
    height = np.where(trees, 8 + 22 * veg[:, 0], 2 * veg[:, 0])
    canopy = np.stack([height, 1 + 0.15 * height], axis=1).round().clip(0, 127).astype(np.int8)
    canopy[rng.random(canopy.shape) < 0.002] = -128

    # Quality layers: QA60 bit 10 (opaque cloud) where the cloud is; cloud probability (%) and the scene
    # classification (4 vegetation, 5 not vegetated, 6 water, 8/9 cloud, 11 snow) exist for L2A tiles only.
    qa60 = np.where(cloud, 1024, 0).astype(np.uint16)[:, None]
    prob = np.clip(np.where(cloud, 90, 2) + rng.normal(0, 3, cloud.shape), 0, 100).astype(np.uint16)[:, None]
    scl = np.select([cloud, cls == 7, cls == 6, (cls <= 3) | (cls >= 8)], [9, 6, 11, 4], 5).astype(np.uint8)[:, None]
    prob[~l2a], scl[~l2a] = 65535, 255

    esa = np.asarray(ESA_CODES, np.uint8)[cls][:, None]
    dw = _DW_OF_ESA[cls][:, None]

    # ERA5 (12): temperature (K) from latitude, season and elevation, precipitation (m) from moisture.
    season = np.cos(2 * np.pi * (month - 7) / 12) * np.sign(lat)
    t_mean = 300 - 0.45 * np.abs(lat) + 8 * season - 6.5 * base_elev[:, 0, 0, 0]
    rain = np.maximum(0.0, 0.08 + 0.05 * (moist.mean(axis=(1, 2, 3))))
    cur = np.stack([t_mean, t_mean - 6, t_mean + 6, rain], axis=1)
    prev = cur + np.array([-1.5, -1.5, -1.5, 0.0]) + rng.normal(0, 0.5, (tiles, 4)) * np.array([1, 1, 1, 0.01])
    year = np.stack([t_mean - 8 * season, t_mean - 20, t_mean + 18, 12 * rain], axis=1)
    era5 = np.concatenate([prev, cur, year], axis=1).astype(np.float32)
    era5[rng.random(tiles) < 0.03] = np.nan

    rad = np.deg2rad
    lat_v = np.stack([np.sin(rad(lat)), np.cos(rad(lat))], 1).astype(np.float32)
    lon_v = np.stack([np.sin(rad(lon)), np.cos(rad(lon))], 1).astype(np.float32)
    month_v = np.stack([np.sin(2 * np.pi * month / 12), np.cos(2 * np.pi * month / 12)], 1).astype(np.float32)

    # Biome from latitude band and mean moisture; ecoregion = biome x longitude sector.
    band = np.digitize(np.abs(lat), [10, 23, 35, 50, 60])                               # 0..5
    wet_tile = (moist.mean(axis=(1, 2, 3)) > 0.3).astype(np.int64)
    biome_idx = np.clip(band * 2 + wet_tile, 0, BIOMES - 1)
    eco_idx = np.clip(biome_idx * 60 + ((lon + 180) / 6).astype(np.int64) % 60, 0, ECOREGIONS - 1)
    biome = np.eye(BIOMES, dtype=np.uint8)[biome_idx]
    eco = np.zeros((tiles, ECOREGIONS), np.uint16)
    eco[np.arange(tiles), eco_idx] = 1

    ids = [f"tile_{start + i:07d}".encode() for i in range(tiles)]
    meta = np.array(list(zip(ids, [b"l2a" if x else b"l1c" for x in l2a])), dtype=METADATA_DTYPE)
    return {"sentinel2": s2, "sentinel1": s1, "aster": aster, "canopy_height_eth": canopy, "dynamic_world": dw,
            "esa_worldcover": esa, "era5": era5, "lat": lat_v, "lon": lon_v, "month": month_v, "biome": biome,
            "eco_region": eco, "metadata": meta,
            "sentinel2_cloudmask": qa60, "sentinel2_cloudprod": prob, "sentinel2_scl": scl,
            "_tile": {"lat": lat, "lon": lon, "month": month, "biome": biome_idx, "eco": eco_idx}}


def _stats(values: np.ndarray, no_data=()) -> dict:
    """Per-channel mean/std/min/max over finite values that are not no-data (channel axis 1)."""
    out = {"mean": [], "std": [], "min": [], "max": []}
    for c in range(values.shape[1]):
        v = values[:, c].astype(np.float64).ravel()
        keep = np.isfinite(v)
        for nd in no_data:
            keep &= v != nd
        v = v[keep]
        if v.size == 0:
            v = np.zeros(1)
        out["mean"].append(float(v.mean()))
        out["std"].append(float(v.std()) or 1.0)
        out["min"].append(float(v.min()))
        out["max"].append(float(v.max()))
    return out


def band_stats(sample: dict[str, np.ndarray]) -> dict:
    l2a = sample["metadata"]["S2_type"] == b"l2a"
    stats = {"sentinel2_l1c": _stats(sample["sentinel2"][~l2a], (0,)),
             "sentinel2_l2a": _stats(sample["sentinel2"][l2a], (0,))}
    for name in ("sentinel1", "aster", "canopy_height_eth", "era5", "lat", "lon", "month"):
        stats[name] = _stats(sample[name], MODALITIES[name].no_data)
    for name in ("sentinel2_cloudmask", "sentinel2_cloudprod"):  # the real file has these two keys too
        stats[name] = _stats(sample[name], S2_QUALITY[name].no_data)
    return stats


def _write_block(dsets: dict, data: dict, start: int, n: int, tile_info: dict) -> None:
    for name, d in dsets.items():
        d[start:start + n] = data[name]
    t = data["_tile"]
    for i in range(n):
        month = int(t["month"][i])
        tile_info[data["metadata"]["tile_id"][i].decode()] = {
            "S2_DATE": f"2019-{month:02d}-15", "S2_type": data["metadata"]["S2_type"][i].decode(),
            "lat": float(t["lat"][i]), "lon": float(t["lon"][i]), "biome": int(t["biome"][i]),
            "eco_region": int(t["eco"][i]), "CRS": "EPSG:4326"}


def write_dataset(out_dir: str, tiles: int = 2000, size: int = 64, seed: int = 0, stem: str | None = None,
                  overwrite: bool = False, compression_level: int = 4, batch: int = 256,
                  splits=(0.9, 0.05, 0.05), quiet: bool = False) -> str:
    """Write a complete MMEarth-format directory; returns the path stem (``out_dir/stem``)."""
    for name, value, least in (("tiles", tiles, 1), ("size", size, 8), ("seed", seed, 0), ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
    if len(splits) != 3 or not all(isinstance(v, (int, float)) and 0 <= v <= 1 for v in splits) or \
            abs(sum(splits) - 1) > 1e-6:
        raise ValueError(f"splits must be three fractions in [0, 1] (train, val, test) summing to 1, got {splits!r}")
    if stem is not None and (not stem or os.sep in stem or stem in (".", "..")):
        raise ValueError(f"stem must be a file name (no {os.sep!r}), got {stem!r}")
    stem = stem or f"synthetic_{tiles}_{size}"
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} is a file; the output must be a folder (made if missing)")
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, stem)
    targets = [base + s for s in (".h5", "_band_stats.json", "_splits.json", "_tile_info.json")]
    existing = [t for t in targets if os.path.exists(t)]
    # A marker present from start to finish: files it sits beside are an interrupted write of ours, which a
    # new write may replace; anything else is the user's and needs overwrite=True.
    marker = base + INCOMPLETE
    interrupted = os.path.isfile(marker)
    if existing and not (overwrite or interrupted):
        raise FileExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to replace it")
    if interrupted:
        remove_stale_temps(base + ".h5")
    with open(marker, "w") as fm:
        fm.write("written by train.data.synthetic; removed when the directory is complete\n")
    rng = np.random.default_rng(seed)
    t0 = time.time()
    tile_info, stats_sample = {}, None
    with atomic_file(targets[0]) as tmp_h5:  # renamed last: a complete .h5 means a complete directory
        with h5py.File(tmp_h5, "w", locking=False) as f:  # the temporary's lock is ours (mmearth_kernels.files)
            dsets = {}
            for name, m in {**MODALITIES, **S2_QUALITY}.items():
                shape = (tiles, m.channels, size, size) if m.level == "pixel" else (tiles, m.channels)
                dsets[name] = f.create_dataset(name, shape=shape, dtype=m.dtype, chunks=(1,) + shape[1:],
                                               compression="gzip", compression_opts=compression_level)
            dsets["metadata"] = f.create_dataset("metadata", shape=(tiles,), dtype=METADATA_DTYPE, chunks=(1,),
                                                 compression="gzip", compression_opts=compression_level)
            # Generate block i + 1 in a thread while block i is compressed and written (numpy and HDF5 both
            # release the GIL for most of it): about a quarter less time on 2 cores. One thread draws all the
            # blocks in order, so the files are identical to a sequential run.
            blocks = [(s, min(batch, tiles - s)) for s in range(0, tiles, batch)]
            with ThreadPoolExecutor(1) as pool:
                pending = pool.submit(generate_batch, rng, *blocks[0], size)
                for i, (start, n) in enumerate(tqdm(blocks, desc=f"[synthetic] {stem}", unit="block", disable=quiet)):
                    data = pending.result()
                    if i + 1 < len(blocks):
                        pending = pool.submit(generate_batch, rng, *blocks[i + 1], size)
                    _write_block(dsets, data, start, n, tile_info)
                    if stats_sample is None:  # statistics from the first block (upstream samples 100k rows)
                        stats_sample = data
        order = rng.permutation(tiles)
        n_train, n_val = int(round(splits[0] * tiles)), int(round(splits[1] * tiles))
        split_json = {"train": sorted(order[:n_train].tolist()), "val": sorted(order[n_train:n_train + n_val].tolist()),
                      "test": sorted(order[n_train + n_val:].tolist())}
        for path, obj in ((targets[1], band_stats(stats_sample)), (targets[2], split_json), (targets[3], tile_info)):
            write_atomically(path, lambda f, o=obj: f.write(json.dumps(o).encode()))
    os.remove(marker)
    if not quiet:
        print(f"[synthetic] wrote {tiles} tiles of {size} px to {base}.h5 in {time.time() - t0:.1f} s",
              file=sys.stderr)
    return base


def main(argv=None):
    ap = ArgumentParser(prog="python -m train.data.synthetic", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", help="directory to write <stem>.h5 and its three JSON files into")
    ap.add_argument("--tiles", type=int, default=2000, help="number of tiles (rows)")
    ap.add_argument("--size", type=int, default=64, help="tile side in pixels (MMEarth64: 64, MMEarth: 128)")
    ap.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    ap.add_argument("--stem", default=None, help="file stem (default synthetic_<tiles>_<size>)")
    ap.add_argument("--gzip", type=int, default=4, choices=range(0, 10), metavar="0-9", help="gzip level")
    ap.add_argument("--splits", default="0.9,0.05,0.05", help="train,val,test fractions (a labelled probe set: "
                                                               "e.g. 0.5,0,0.5)")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing dataset with the same stem")
    args = ap.parse_args(argv)
    try:
        splits = tuple(float(v) for v in args.splits.split(","))
    except ValueError:
        ap.error(f"--splits must be three comma-separated fractions, got {args.splits!r}")
    if len(splits) != 3 or not all(0 <= v <= 1 for v in splits) or abs(sum(splits) - 1) > 1e-6:
        ap.error(f"--splits must be three fractions in [0, 1] summing to 1, got {args.splits!r}")
    for name, least in (("tiles", 1), ("size", 8), ("seed", 0)):
        if getattr(args, name) < least:
            ap.error(f"--{name} must be an int >= {least}, got {getattr(args, name)}")
    if args.stem is not None and (not args.stem or os.sep in args.stem or args.stem in (".", "..")):
        ap.error(f"--stem must be a file name (no {os.sep!r}), got {args.stem!r}")
    try:
        write_dataset(args.out_dir, args.tiles, args.size, args.seed, args.stem, args.overwrite, args.gzip,
                      splits=splits)
    except FileExistsError as e:
        ap.error(f"OUT_DIR: {e}")
    except OSError as e:  # no permission, a full disk (WriteError names the file)
        ap.error(f"OUT_DIR {args.out_dir}: {e.strerror or e}" if not isinstance(e, WriteError) else str(e))


if __name__ == "__main__":
    main()
