"""Reader for MMEarth HDF5 directories (``<stem>.h5`` + band-stats, splits and tile-info JSON).

No-data policy (README, "MMEarth data"): no-data becomes NaN in continuous targets, with a
``<name>_valid`` mask; class targets use -1 (ignored by the losses); the encoder input never holds
NaN or inf (no-data -> 0, the normalised mean); ESA tree cover survives (no-data is decided on the
stored code, before remapping); input and target never share storage.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from .cache_format import open_cache
from .modalities import ALL_TASKS, MODALITIES, DataError, dw_lookup, esa_lookup, used_channels  # noqa: F401
from .sources import H5Source, Source, load_json

SPLITS = ("train", "val", "test")


# Biome / eco-region rows that mark several classes (torchgeo's MMEarth fixture generator writes rows of all ones
# or all zeros; a real file holds one-hot rows): "soft" reads every row as a label distribution over the classes
# it marks (cross-entropy with soft targets; for a one-hot row exactly the hard-label loss), "strict" refuses a
# row with more than one class, naming the file, modality and row.
LABEL_POLICIES = ("soft", "strict")


def stats_arrays(stats: dict, path: str, names) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(mean, std) per continuous modality, channel-selected; S2 gets 'l1c' and 'l2a' entries."""
    out = {}
    for name in names:
        m = MODALITIES[name]
        if m.kind != "continuous":
            continue
        keys = ["sentinel2_l1c", "sentinel2_l2a"] if name == "sentinel2" else [m.stats_key]
        for key in keys:
            entry = stats.get(key)
            if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
                raise DataError(f"{path}: band statistics have no 'mean'/'std' for key {key!r} (modality {name})")
            try:
                mean, std = np.asarray(entry["mean"], np.float32), np.asarray(entry["std"], np.float32)
            except (TypeError, ValueError) as e:
                raise DataError(f"{path}: statistics {key!r} are not lists of numbers (modality {name}): {e}") from None
            if mean.shape != (m.channels,) or std.shape != (m.channels,):
                raise DataError(f"{path}: statistics {key!r} must have {m.channels} values (modality {name}), "
                                f"got {mean.shape[0]} means and {std.shape[0]} stds")
            ch = list(used_channels(name))
            if not (np.isfinite(mean[ch]).all() and np.isfinite(std[ch]).all()):
                raise DataError(f"{path}: statistics {key!r} hold NaN or inf (modality {name}): a band normalised by "
                                f"them would be silently wrong")
            out[key] = (mean[ch], np.where(std[ch] > 0, std[ch], 1.0).astype(np.float32))
    return out


def normalize_batch(raw: dict[str, torch.Tensor], l2a: torch.Tensor, stats: dict, inputs, targets) -> dict:
    """Raw stored values (a batch, any device) -> training tensors, by the no-data policy.

    ``raw[name]`` is ``[B, C, H, W]`` or ``[B, C]`` in the stored dtype with the used channels;
    ``l2a`` ``[B]`` bool picks the S2 statistics per tile. Returns ``input`` ``[B, C_in, H, W]``
    (NaN-free), each target (continuous: float with NaN; DW/ESA: int64 with -1; biome/eco-region: float
    label distributions ``[B, K]``, all zeros when unlabelled), and ``<name>_valid`` masks.
    """
    dev = l2a.device
    out = {}
    dense = {}
    for name in set(inputs) | set(targets):
        m = MODALITIES[name]
        x = raw[name]
        if m.kind == "continuous":
            v = x.to(torch.float32)
            bad = ~torch.isfinite(v)
            for nd in m.no_data:
                bad |= x == nd
            if name == "sentinel2":
                l1m, l1s = (torch.as_tensor(a, device=dev) for a in stats["sentinel2_l1c"])
                l2m, l2s = (torch.as_tensor(a, device=dev) for a in stats["sentinel2_l2a"])
                shape = (-1, l1m.shape[0]) + (1,) * (v.dim() - 2)
                sel = l2a.view(-1, *([1] * (v.dim() - 1)))
                mean = torch.where(sel, l2m.view(shape), l1m.view(shape))
                std = torch.where(sel, l2s.view(shape), l1s.view(shape))
            else:
                mean, std = (torch.as_tensor(a, device=dev) for a in stats[m.stats_key])
                shape = (1, -1) + (1,) * (v.dim() - 2)
                mean, std = mean.view(shape), std.view(shape)
            v = ((v - mean) / std).masked_fill(bad, float("nan"))
            dense[name] = v
            if name in targets:
                out[name] = v
                out[name + "_valid"] = ~bad
        elif m.kind == "classes":
            lut = stats.get("lut_" + name)
            if lut is None:
                lut = dw_lookup() if name == "dynamic_world" else esa_lookup()
            lut = torch.as_tensor(lut, device=dev)
            out[name] = lut[x[:, 0].long()]  # [B, H, W] int64, -1 = no data
        else:  # biome / eco-region rows -> label distributions [B, K] (LABEL_POLICIES): the row's weights over
            # its classes, summing to 1 (a one-hot row is its class); an all-zero or no-data row -> all zeros,
            # which the loss ignores
            w = x.to(torch.float32).masked_fill((x == m.no_data[0]).any(dim=1, keepdim=True), 0.0)
            total = w.sum(dim=1, keepdim=True)
            out[name] = torch.where(total > 0, w / total.clamp_min(1.0), torch.zeros_like(w))
    # The encoder input: its own tensor (never a view of a target), no NaN/inf.
    if inputs:
        out["input"] = torch.cat([torch.nan_to_num(dense[n], nan=0.0, posinf=0.0, neginf=0.0) for n in inputs], dim=1)
    return out


def device_stats(stats: dict, device) -> dict:
    """The statistics and class lookup tables as tensors on ``device``, once: :func:`normalize_batch` on a
    GPU then copies nothing from the host per batch."""
    out = {k: tuple(torch.as_tensor(a, device=device) for a in v) for k, v in stats.items()}
    out["lut_dynamic_world"] = torch.as_tensor(dw_lookup(), device=device)
    out["lut_esa_worldcover"] = torch.as_tensor(esa_lookup(), device=device)
    return out


class MMEarthDataset(torch.utils.data.Dataset):
    """One split of an MMEarth directory, as dicts of tensors.

    Args:
        stem: path of the files without extension (``.../data_1M_v001_64/data_1M_v001_64``), or the ``.h5``.
        split: ``"train"``, ``"val"`` or ``"test"`` (rows listed in ``<stem>_splits.json``; a split listed with no
            rows, or not listed, is empty: it reads as 0 rows, and :meth:`require_rows` says so for a run that
            needs it).
        inputs: pixel modalities concatenated into the encoder input (default Sentinel-2, 12 bands).
        targets: modalities returned as targets (default: all 12 tasks).
        crop: side of the random crop (64 -> 56, 128 -> 112), one offset per sample for every pixel
            modality; None keeps the full tile.
        seed: crop offsets are a function of (seed, epoch, row): deterministic; see ``set_epoch``.
        cache: a directory made by ``python -m train.data.cache`` (uncompressed, memory-mapped).
        normalize: False returns raw stored values (``raw_<name>``, ``l2a``) so that
            :func:`normalize_batch` can run on the GPU after the transfer.
        label_policy: biome / eco-region rows marking several classes (:data:`LABEL_POLICIES`): "soft" (label
            distributions, said once as a warning) or "strict" (a DataError naming the row).
    Each sample holds ``input``, every target (and ``<name>_valid`` for continuous ones), ``index``.
    """

    def __init__(self, stem: str, split: str = "train", inputs=("sentinel2",), targets=ALL_TASKS,
                 crop: int | None = None, seed: int = 0, cache: str | None = None, normalize: bool = True,
                 label_policy: str = "soft"):
        if label_policy not in LABEL_POLICIES:
            raise ValueError(f"label_policy must be one of {', '.join(LABEL_POLICIES)}, got {label_policy!r}")
        self.label_policy, self._told_multi_hot = label_policy, False
        self.stem = stem[:-3] if stem.endswith(".h5") else stem
        self.path = self.stem + ".h5"
        self.inputs, self.targets = tuple(inputs), tuple(targets)
        for name in self.inputs + self.targets:
            if name not in MODALITIES:
                raise ValueError(f"unknown modality {name!r}; known: {', '.join(MODALITIES)}")
        for name in self.inputs:
            if MODALITIES[name].level != "pixel" or MODALITIES[name].kind != "continuous":
                raise ValueError(f"input modality {name!r} must be a continuous pixel modality")
        self.names = tuple(dict.fromkeys(self.inputs + self.targets))
        self.normalize, self.seed, self.epoch = normalize, seed, 0
        self.h5 = H5Source(self.path, self.names, self.stem + "_tile_info.json")
        self.n, self.size = self.h5.n, self.h5.size
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or not 0 < crop <= self.size):
            raise DataError(f"{self.path}: crop must be an int in (0, {self.size}] for its {self.size} px tiles, got "
                            f"{crop!r}")
        self.crop = crop
        self.stats = stats_arrays(load_json(self.stem + "_band_stats.json", "band statistics"),
                                  self.stem + "_band_stats.json", self.names)
        splits = load_json(self.stem + "_splits.json", "splits")
        self.split = split
        self._split_sizes = {k: len(v) if isinstance(v, list) else "?" for k, v in splits.items()}
        if split not in splits and split not in SPLITS:
            raise DataError(f"{self.stem}_splits.json: no split {split!r} (has {', '.join(splits)})")
        listed = splits.get(split, [])  # a standard split the file does not list has no rows: an empty split
        if not isinstance(listed, list) or not all(isinstance(r, int) and not isinstance(r, bool) for r in listed):
            bad = next((r for r in listed if not isinstance(r, int) or isinstance(r, bool)), listed) \
                if isinstance(listed, list) else listed
            raise DataError(f"{self.stem}_splits.json: split {split!r} must be a list of row numbers (ints), got "
                            f"{bad!r}")
        rows = np.asarray(listed, dtype=np.int64)
        bad = rows[(rows < 0) | (rows >= self.n)]
        if bad.size:
            raise DataError(f"{self.stem}_splits.json: split {split!r} lists row {int(bad[0])}, but {self.path} has "
                            f"{self.n} rows")
        self.rows = rows
        # Where rows are read from: the HDF5 file, or the cache made from it (checked against it)
        self.source: Source = self.h5 if cache is None else open_cache(cache, self.path, self.names)

    def require_rows(self, needed_by: str) -> None:
        """For a run that cannot do without this split: a DataError saying that it is empty."""
        if not len(self):
            listed = ", ".join(f"{k} ({n} rows)" for k, n in self._split_sizes.items()) or "none"
            raise DataError(f"{self.stem}_splits.json: split {self.split!r} is empty (no rows; the file's splits: "
                            f"{listed}); {needed_by} needs rows in it")

    def set_epoch(self, epoch: int) -> None:
        """New crop offsets per epoch (still a function of seed, epoch and row)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    # -- reading -----------------------------------------------------------------------------
    def read_raw(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Stored values of these rows (used channels) and the per-row L2A flag, in the given order."""
        order = np.argsort(rows, kind="stable")
        uniq, inverse = np.unique(rows[order], return_inverse=True)  # sources read increasing, unique rows
        raw = {name: self.source.read(name, uniq) for name in self.names}
        l2a = self.source.l2a(uniq)
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        pick = inverse[back]
        return {k: v[pick] for k, v in raw.items()}, l2a[pick]

    def _check_one_hot(self, raw: dict[str, np.ndarray], rows: np.ndarray) -> None:
        """Biome / ecoregion rows that mark several classes (on the host, before any copy: no device sync):
        refused under ``label_policy="strict"``; under "soft" read as label distributions, said once."""
        for name in self.names:
            m = MODALITIES[name]
            if m.kind != "onehot":
                continue
            a = raw[name]
            labelled = ~(a == m.no_data[0]).any(axis=1)
            ones = (a != 0).sum(axis=1)
            bad = np.flatnonzero(labelled & ((ones > 1) | (a.max(axis=1, initial=0) > 1)))
            if not bad.size:
                continue
            r = int(rows[bad[0]])
            if self.label_policy == "strict":
                raise DataError(f"{self.path}: modality {name!r}, row {r}: a one-hot row with "
                                f"{int(ones[bad[0]])} non-zero entries (classes "
                                f"{np.flatnonzero(a[bad[0]])[:6].tolist()}); expected exactly one 1, all zeros "
                                f"(unlabelled) or the no-data value {m.no_data[0]} (--label-policy strict; the "
                                f"default, soft, reads such a row as a label distribution over its classes)")
            if not self._told_multi_hot:
                self._told_multi_hot = True
                warnings.warn(f"{self.path}: modality {name!r} has rows that mark several classes (row {r}: "
                              f"{int(ones[bad[0]])}); they are read as label distributions over those classes "
                              f"(--label-policy soft; strict refuses them)", stacklevel=3)

    def _crop(self, raw: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
        if self.crop is None or self.crop == self.size:
            return raw
        span = self.size - self.crop + 1
        offs = np.array([np.random.default_rng((self.seed, self.epoch, int(r))).integers(0, span, 2) for r in rows])
        out = dict(raw)
        for name in self.names:
            if MODALITIES[name].level == "pixel":
                a = raw[name]
                out[name] = np.stack([a[i, :, y:y + self.crop, x:x + self.crop] for i, (y, x) in enumerate(offs)]) \
                    if len(rows) else a[:, :, :self.crop, :self.crop]  # an empty batch (an empty split) keeps shape
        return out

    def read_batch(self, idxs) -> dict[str, torch.Tensor]:
        """The samples at ``idxs`` as one batch (each value ``[len(idxs), ...]``): one read per modality.
        The trainer reads this way; what the model gets is never cut into samples and stacked again."""
        rows = self.rows[np.asarray(idxs, dtype=np.int64)]
        raw, l2a = self.read_raw(rows)
        self._check_one_hot(raw, rows)
        raw = self._crop(raw, rows)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in raw.items()}
        l2a_t = torch.from_numpy(l2a)
        if self.normalize:
            batch = normalize_batch(tensors, l2a_t, self.stats, self.inputs, self.targets)
        else:
            batch = {f"raw_{k}": v for k, v in tensors.items()}
            batch["l2a"] = l2a_t
        batch["index"] = torch.from_numpy(rows)
        return batch

    def __getitems__(self, idxs) -> list[dict]:
        """Samples for a plain ``DataLoader(ds, batch_size=...)`` (its collate stacks them again): one read per
        modality for the whole batch. :meth:`read_batch` skips the split and the stack."""
        batch = self.read_batch(idxs)
        return [{k: v[i] for k, v in batch.items()} for i in range(len(idxs))]

    def __getitem__(self, idx: int) -> dict:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a split of {len(self)} rows")
        return self.__getitems__([idx % len(self)])[0]
