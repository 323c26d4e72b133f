"""The cache's on-disk format and its reader (the builder is :mod:`.cache`; the format is described there).

Kept apart from the builder so that the dataset, which reads caches, and the builder, which reads the
dataset, do not import each other.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .modalities import DataError

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
    """A :class:`.sources.Source` over the cache's memory-mapped arrays (used channels, stored dtypes)."""

    def __init__(self, root: str, arrays: dict[str, np.ndarray], l2a: np.ndarray):
        self.root, self.arrays, self.l2a_flags = root, arrays, l2a

    def read(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.arrays[name][rows]

    def l2a(self, rows: np.ndarray) -> np.ndarray:
        return self.l2a_flags[rows]


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
