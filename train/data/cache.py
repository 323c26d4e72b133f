"""A one-time conversion of an MMEarth ``.h5`` into an uncompressed, memory-mapped cache.

    python -m train.data.cache STEM CACHE_DIR [--modalities ...]

Format (a directory): one ``<modality>.npy`` per modality (stored dtype, used channels, all rows),
``l2a.npy`` (the per-row S2 product, from tile-info), and ``manifest.json`` with the source file's
path, size and modification time and every array's shape, dtype and byte size. The directory is
written under a temporary name and renamed when complete, so a half-written cache is never used;
opening checks the sizes (a truncated array is refused) and the source identity (a cache of an
older or different file is refused as stale). Reads are plain memory-mapped row gathers: no gzip.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np
from tqdm import tqdm

from .modalities import MODALITIES
from .reader import ALL_TASKS, DataError, MMEarthDataset

MANIFEST = "manifest.json"
FORMAT = 1


def _source_id(h5_path: str) -> dict:
    st = os.stat(h5_path)
    return {"path": os.path.abspath(h5_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


class Cache:
    def __init__(self, root: str, arrays: dict[str, np.ndarray], l2a: np.ndarray):
        self.root, self.arrays, self.l2a = root, arrays, l2a

    def read(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.arrays[name][rows]


def open_cache(root: str, h5_path: str, names) -> Cache:
    """Open a cache made from ``h5_path``; refuse a stale, incomplete or foreign one."""
    man_path = os.path.join(root, MANIFEST)
    if not os.path.isfile(man_path):
        raise DataError(f"{root}: not a complete cache ({MANIFEST} missing); build it with "
                        f"`python -m train.data.cache`")
    with open(man_path) as f:
        man = json.load(f)
    if man.get("format") != FORMAT:
        raise DataError(f"{man_path}: cache format {man.get('format')} is not {FORMAT}; rebuild it")
    src = _source_id(h5_path)
    if (man["source"]["size"], man["source"]["mtime_ns"]) != (src["size"], src["mtime_ns"]):
        raise DataError(f"{root}: stale cache: it was built from {man['source']['path']} "
                        f"({man['source']['size']} bytes), which no longer matches {h5_path} ({src['size']} bytes, "
                        f"modified since); rebuild the cache")
    arrays = {}
    for name in list(names) + ["l2a"]:
        entry = man["arrays"].get(name)
        if entry is None:
            raise DataError(f"{root}: modality {name!r} is not in this cache (has {', '.join(man['arrays'])})")
        path = os.path.join(root, f"{name}.npy")
        if not os.path.isfile(path) or os.path.getsize(path) != entry["file_bytes"]:
            raise DataError(f"{path}: size does not match the manifest (modality {name}); the cache is damaged, "
                            f"rebuild it")
        arrays[name] = np.load(path, mmap_mode="r")
        if list(arrays[name].shape) != entry["shape"] or str(arrays[name].dtype) != entry["dtype"]:
            raise DataError(f"{path}: shape/dtype do not match the manifest (modality {name}); rebuild the cache")
    l2a = np.asarray(arrays.pop("l2a"))
    return Cache(root, arrays, l2a)


def build_cache(stem: str, root: str, names=ALL_TASKS, rows_per_read: int = 512, overwrite: bool = False) -> str:
    """Convert every row of ``stem``.h5 (all splits) into a cache directory at ``root``."""
    if os.path.exists(root) and not overwrite:
        raise FileExistsError(f"{root} exists; pass overwrite=True (--overwrite) to rebuild it")
    ds = MMEarthDataset(stem, split=next(iter(_splits(stem))), inputs=(), targets=tuple(names))
    tmp = root.rstrip("/") + f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        rows = np.arange(ds.n)
        first, l2a0 = ds.read_raw(rows[:1])
        outs = {name: np.lib.format.open_memmap(os.path.join(tmp, f"{name}.npy"), mode="w+", dtype=a.dtype,
                                                shape=(ds.n,) + a.shape[1:]) for name, a in first.items()}
        l2a = np.zeros(ds.n, dtype=bool)
        for start in tqdm(range(0, ds.n, rows_per_read), desc=f"caching {os.path.basename(ds.path)}", unit="block"):
            block = rows[start:start + rows_per_read]
            raw, flags = ds.read_raw(block)
            for name, a in raw.items():
                outs[name][start:start + len(block)] = a
            l2a[start:start + len(block)] = flags
        np.save(os.path.join(tmp, "l2a.npy"), l2a)
        for a in outs.values():
            a.flush()
        del outs
        arrays = {}
        for name in list(first) + ["l2a"]:
            p = os.path.join(tmp, f"{name}.npy")
            a = np.load(p, mmap_mode="r")
            arrays[name] = {"shape": list(a.shape), "dtype": str(a.dtype), "file_bytes": os.path.getsize(p)}
        man = {"format": FORMAT, "source": _source_id(ds.path), "rows": ds.n, "arrays": arrays}
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(man, f, indent=1)
        if os.path.exists(root):
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _splits(stem: str) -> dict:
    with open(stem + "_splits.json") as f:
        return json.load(f)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stem", help="MMEarth file stem (path without .h5) or the .h5 itself")
    ap.add_argument("cache_dir", help="directory to create")
    ap.add_argument("--modalities", nargs="+", default=list(ALL_TASKS), choices=list(MODALITIES),
                    help="modalities to cache (default: all 12 tasks)")
    ap.add_argument("--overwrite", action="store_true", help="rebuild an existing cache directory")
    args = ap.parse_args(argv)
    stem = args.stem[:-3] if args.stem.endswith(".h5") else args.stem
    try:
        print(build_cache(stem, args.cache_dir, args.modalities, overwrite=args.overwrite))
    except (FileExistsError, DataError) as e:
        ap.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main()
