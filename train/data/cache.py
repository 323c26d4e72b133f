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
import json
import os
import shutil

import numpy as np
from tqdm import tqdm

from .cli import ArgumentParser
from mmearth_kernels.files import TempDir, WriteError
from .cache_format import FORMAT, MANIFEST, MARKER, _source_id, is_cache_dir, open_cache  # noqa: F401
from .modalities import ALL_TASKS, MODALITIES, DataError
from .reader import MMEarthDataset
from .sources import load_json

def build_cache(stem: str, root: str, names=ALL_TASKS, rows_per_read: int = 512, overwrite: bool = False) -> str:
    """Convert every row of ``stem``.h5 (all splits) into a cache directory at ``root``."""
    root = root.rstrip("/") or root
    if os.path.exists(root):
        if not overwrite:
            raise FileExistsError(f"{root} exists; pass overwrite=True (--overwrite) to rebuild it")
        if not is_cache_dir(root) and not (os.path.isdir(root) and not os.listdir(root)):
            raise FileExistsError(f"{root} exists and is not a cache made by train.data.cache (no {MARKER} marker); "
                                  f"not removing it: choose another folder or move it away")
    if not os.path.isfile(stem + ".h5"):
        raise DataError(f"{stem}.h5: HDF5 file is missing")
    ds = MMEarthDataset(stem, split=next(iter(_splits(stem)), "train"), inputs=(), targets=tuple(names))
    parent, base = os.path.split(os.path.abspath(root))
    for name in os.listdir(parent):  # what a killed build of an earlier version left (``.tmp``, the marker inside)
        old = os.path.join(parent, name)
        if name.startswith(f".{base}.") and name.endswith(".tmp") and os.path.isfile(os.path.join(old, MARKER)):
            shutil.rmtree(old, ignore_errors=True)
    with TempDir(root) as tmp:  # exclusive and locked while we build: a kill leaves it to the next build's sweep
        _fill(ds, tmp.path, ds.read_raw(np.arange(ds.n)[:1])[0], rows_per_read)
        if os.path.exists(root):
            shutil.rmtree(root)
        tmp.commit()
    return root


def _fill(ds: MMEarthDataset, tmp: str, first: dict, rows_per_read: int) -> None:
    """Every row of ``ds`` (all splits) into the folder ``tmp``: arrays, L2A flags, the manifest, the marker."""
    with open(os.path.join(tmp, MARKER), "w") as f:
        f.write("a cache written by train.data.cache\n")
    rows = np.arange(ds.n)
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


def _splits(stem: str) -> dict:
    return load_json(stem + "_splits.json", "splits")


def main(argv=None):
    ap = ArgumentParser(prog="python -m train.data.cache", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stem", help="MMEarth file stem (path without .h5) or the .h5 itself")
    ap.add_argument("cache_dir", help="directory to create")
    ap.add_argument("--modalities", nargs="+", default=list(ALL_TASKS), choices=list(MODALITIES),
                    help="modalities to cache (default: all 12 tasks)")
    ap.add_argument("--overwrite", action="store_true", help="rebuild an existing cache directory")
    args = ap.parse_args(argv)
    stem = args.stem[:-3] if args.stem.endswith(".h5") else args.stem
    try:
        print(build_cache(stem, args.cache_dir, args.modalities, overwrite=args.overwrite))
    except FileExistsError as e:
        ap.error(f"CACHE_DIR: {e}")
    except DataError as e:
        ap.error(f"STEM: {e}")
    except WriteError as e:
        ap.error(f"CACHE_DIR: {e}")
    except OSError as e:  # the folder cannot be listed or written
        ap.error(f"CACHE_DIR {args.cache_dir}: {e.strerror or e}: {e.filename or os.path.dirname(args.cache_dir)}")


if __name__ == "__main__":
    main()
