"""A one-time conversion of an MMEarth ``.h5`` into an uncompressed, memory-mapped cache.

    python -m train.data.cache STEM CACHE_DIR [--modalities ...]

Format (a directory): one ``<modality>.npy`` per modality (stored dtype, used channels, all rows),
``l2a.npy`` (the per-row S2 product, from tile-info), ``manifest.json`` with the source file's identity
and every array's shape, dtype and byte size, and a ``.mmearth-cache`` marker. The directory is written
under an exclusive temporary name and renamed when complete, so a half-written cache is never used;
opening checks the sizes (a truncated array is refused) and the source identity (a cache of an older
or different file is refused as stale). Reads are plain memory-mapped row gathers: no gzip.

Staleness: the manifest records the source's size, modification time and status-change time (ctime,
which every write to the file updates and which ``touch`` cannot set back) and a SHA-256 of its first
and last MiB (where HDF5 keeps its superblock and, after an edit, most metadata). An in-place edit
changes the ctime, so it is caught even when the mtime is restored; copying or ``chmod``-ing the file
also changes it, which costs a rebuild, never a wrong read.

Nothing that is not a cache is removed: rebuilding over a folder needs the marker (or an old-format
manifest) inside it, otherwise the builder stops with an error that names the folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
from tqdm import tqdm

from .modalities import MODALITIES
from .reader import ALL_TASKS, DataError, MMEarthDataset

MANIFEST = "manifest.json"
MARKER = ".mmearth-cache"
FORMAT = 2
_EDGE = 1 << 20  # bytes hashed at each end of the source


def _source_id(h5_path: str) -> dict:
    st = os.stat(h5_path)
    h = hashlib.sha256()
    with open(h5_path, "rb") as f:
        h.update(f.read(_EDGE))
        if st.st_size > _EDGE:
            f.seek(max(_EDGE, st.st_size - _EDGE))
            h.update(f.read(_EDGE))
    return {"path": os.path.abspath(h5_path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns, "edges_sha256": h.hexdigest()}


def is_cache_dir(root: str) -> bool:
    """Whether ``root`` is a cache this module made (its marker, or a manifest of an older format)."""
    if os.path.isfile(os.path.join(root, MARKER)):
        return True
    try:
        with open(os.path.join(root, MANIFEST)) as f:
            man = json.load(f)
        return isinstance(man, dict) and "format" in man and "arrays" in man and "source" in man
    except (OSError, ValueError):
        return False


def _read_manifest(root: str) -> dict:
    man_path = os.path.join(root, MANIFEST)
    if not os.path.isfile(man_path):
        raise DataError(f"{root}: not a complete cache ({MANIFEST} missing); build it with "
                        f"`python -m train.data.cache`")
    try:
        with open(man_path) as f:
            man = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{man_path}: damaged cache manifest ({e}); rebuild the cache") from None
    if not isinstance(man, dict) or not isinstance(man.get("arrays"), dict) or not isinstance(man.get("source"), dict):
        raise DataError(f"{man_path}: not a cache manifest (no 'arrays'/'source' records); rebuild the cache")
    return man


class Cache:
    def __init__(self, root: str, arrays: dict[str, np.ndarray], l2a: np.ndarray):
        self.root, self.arrays, self.l2a = root, arrays, l2a

    def read(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.arrays[name][rows]


def open_cache(root: str, h5_path: str, names) -> Cache:
    """Open a cache made from ``h5_path``; refuse a stale, incomplete or foreign one."""
    man_path = os.path.join(root, MANIFEST)
    man = _read_manifest(root)
    if man.get("format") != FORMAT:
        raise DataError(f"{man_path}: cache format {man.get('format')} is not {FORMAT}; rebuild it")
    src = _source_id(h5_path)
    old = man["source"]
    changed = [k for k in ("size", "mtime_ns", "ctime_ns", "edges_sha256") if old.get(k) != src[k]]
    if changed:
        raise DataError(f"{root}: stale cache: it was built from {old.get('path')} ({old.get('size')} bytes), which "
                        f"no longer matches {h5_path} ({src['size']} bytes; changed: {', '.join(changed)}); rebuild "
                        f"the cache")
    arrays = {}
    for name in list(names) + ["l2a"]:
        entry = man["arrays"].get(name)
        if not isinstance(entry, dict) or not {"file_bytes", "shape", "dtype"} <= set(entry):
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
    root = root.rstrip("/") or root
    if os.path.exists(root):
        if not overwrite:
            raise FileExistsError(f"{root} exists; pass overwrite=True (--overwrite) to rebuild it")
        if not is_cache_dir(root) and not (os.path.isdir(root) and not os.listdir(root)):
            raise FileExistsError(f"{root} exists and is not a cache made by train.data.cache (no {MARKER} marker); "
                                  f"not removing it: choose another folder or move it away")
    ds = MMEarthDataset(stem, split=next(iter(_splits(stem))), inputs=(), targets=tuple(names))
    parent, base = os.path.split(os.path.abspath(root))
    for name in os.listdir(parent):  # what a killed build left behind (ours: the prefix and the marker)
        old = os.path.join(parent, name)
        if name.startswith(f".{base}.") and name.endswith(".tmp") and os.path.isfile(os.path.join(old, MARKER)):
            shutil.rmtree(old, ignore_errors=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{base}.", suffix=".tmp")  # exclusive
    with open(os.path.join(tmp, MARKER), "w") as f:
        f.write("a cache written by train.data.cache\n")
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
    from .reader import _load_json

    return _load_json(stem + "_splits.json", "splits")


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
