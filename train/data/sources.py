"""Where a dataset's rows come from: the MMEarth HDF5 file, or the uncompressed cache made from it.

Both offer the same two reads (:class:`Source`), so the reader (:mod:`.reader`) does not care which it has;
the cache's reader is :class:`.cache_format.Cache`.
"""

from __future__ import annotations

import json
import os
from typing import Protocol

import h5py
import numpy as np

from .modalities import MODALITIES, DataError, tile_id_field, used_channels


class Source(Protocol):
    def read(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Stored values of modality ``name`` (its used channels) at ``rows`` (increasing, unique)."""

    def l2a(self, rows: np.ndarray) -> np.ndarray:
        """Per row, True if the tile's Sentinel-2 is L2A (it picks the normalisation statistics)."""


def load_json(path: str, what: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"{path}: {what} file is missing")
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: cannot read {what} ({e})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {what} must be a JSON object, got a {type(obj).__name__}")
    return obj


class H5Source:
    """``<stem>.h5``, checked once when opened (every modality's shape, dtype and row count); the tile-info
    JSON says which tiles are L2A. One file handle per process, opened lazily: h5py handles must not cross a
    fork (DataLoader workers)."""

    def __init__(self, path: str, names, tile_info_path: str):
        self.path, self.names = path, tuple(names)
        if not os.path.isfile(path):
            raise DataError(f"{path}: HDF5 file is missing")
        self.n, self.size = self._validate()
        self.tile_info_path = tile_info_path
        self.tile_info = load_json(tile_info_path, "tile info")
        self._h5, self._pid = None, None

    def _validate(self):
        try:
            f = h5py.File(self.path, "r")
        except OSError as e:
            raise DataError(f"{self.path}: cannot open as HDF5 (truncated or not an MMEarth file): {e}") from e
        with f:
            n = size = None
            for name in self.names + ("metadata",):
                if name not in f:
                    raise DataError(f"{self.path}: modality {name!r} is missing (datasets: {', '.join(f.keys())})")
                d = f[name]
                if not isinstance(d, h5py.Dataset):
                    raise DataError(f"{self.path}: {name!r} is an HDF5 {type(d).__name__}, not a dataset (modality "
                                    f"{name})")
                if name == "metadata":
                    field = tile_id_field(d.dtype)
                    if d.shape != (n,) or field is None or d.dtype[field].kind != "S":
                        raise DataError(f"{self.path}: metadata must be ({n},) records whose tile_id (or first) field "
                                        f"is a byte string, got {d.shape} {d.dtype}")
                    self.id_field = field
                    continue
                m = MODALITIES[name]
                ndim = 4 if m.level == "pixel" else 2
                if d.ndim != ndim or d.shape[1] != m.channels or (ndim == 4 and d.shape[2] != d.shape[3]):
                    want = "(N, C, H, H)" if ndim == 4 else "(N, C)"
                    raise DataError(f"{self.path}: modality {name!r} must have shape {want} with C = {m.channels}, "
                                    f"got {d.shape}")
                if not m.accepts(d.dtype):
                    also = "".join(f" or {t}" for t in m.also_accepted)
                    raise DataError(f"{self.path}: modality {name!r} must be stored as {m.dtype}{also}, got {d.dtype}")
                if n is None:
                    n = d.shape[0]
                elif d.shape[0] != n:
                    raise DataError(f"{self.path}: modality {name!r} has {d.shape[0]} rows, others have {n}")
                if ndim == 4:
                    if size is None:
                        size = d.shape[2]
                    elif d.shape[2] != size:
                        raise DataError(f"{self.path}: modality {name!r} is {d.shape[2]} px, others {size} px")
        return n, size

    def _file(self):
        if self._h5 is None or self._pid != os.getpid():
            self._h5, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._h5

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"], state["_pid"] = None, None
        return state

    def read(self, name: str, rows: np.ndarray) -> np.ndarray:
        try:
            a = self._file()[name][rows.tolist()]  # one read call per modality; rows must be increasing
        except OSError as e:
            raise DataError(f"{self.path}: read failed for rows {rows[:4].tolist()}... of {name!r} (truncated "
                            f"file?): {e}") from e
        ch = used_channels(name)
        return a if len(ch) == a.shape[1] else a[:, list(ch)]

    def l2a(self, rows: np.ndarray) -> np.ndarray:
        try:
            ids = self._file()["metadata"][self.id_field][rows.tolist()]
        except OSError as e:
            raise DataError(f"{self.path}: read failed for metadata rows {rows[:4].tolist()}... (truncated file?): "
                            f"{e}") from e
        return self._l2a_flags(ids)

    def _l2a_flags(self, ids) -> np.ndarray:
        """S2_type per row from the tile-info JSON (the training code's source; the metadata copy is ignored)."""
        flags = np.empty(len(ids), dtype=bool)
        for i, raw in enumerate(ids):
            tile = raw.decode()
            info = self.tile_info.get(tile)
            if not isinstance(info, dict) or "S2_type" not in info:
                raise DataError(f"{self.tile_info_path}: no S2_type for tile {tile!r} (modality sentinel2)")
            kind = str(info["S2_type"]).lower()
            if kind not in ("l1c", "l2a"):
                raise DataError(f"{self.tile_info_path}: tile {tile!r} has S2_type {info['S2_type']!r}; "
                                f"expected l1c or l2a (modality sentinel2)")
            flags[i] = kind == "l2a"
        return flags
