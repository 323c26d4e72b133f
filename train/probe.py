"""Export a pretrained encoder, extract pooled features, fit a linear probe, report accuracy.

    python -m train.probe --checkpoint runs/demo/last.pt --data ~/.cache/mmearth-kernels/demo-data/synthetic_2000_64
    python -m train.probe --checkpoint runs/demo/last.pt --data labelled.npz          # arrays x, y [, split]
    python -m train.probe --checkpoint runs/demo/last.pt --export encoder.pt --layout timm
    mmearth-probe ...                                                               # the same, installed

Labelled sets:
  * an MMEarth file stem (``.h5`` + json files): the encoder sees the full tile's 12 S2 bands normalised
    exactly as in pretraining; ``--label`` picks the label: ``dominant_landcover`` (the most frequent ESA
    WorldCover class of the tile: a scene-level label), ``elevation_band`` (the tile's mean ASTER elevation
    below -0.5, within, or above +0.5 of the dataset's standardised elevation: not an input, so the encoder
    must infer it from the scene), ``biome`` or ``eco_region``. The probe is fitted
    on the ``train`` split and scored on ``val`` and ``test``.
  * ``.npz`` or ``.h5`` with ``x`` ``[N, 12, H, W]`` (already normalised like the pretraining input; H a
    multiple of the patch size) and ``y`` ``[N]`` integer labels; optional ``split`` ``[N]`` (0 train,
    1 val, 2 test), else ``--val-fraction`` of the rows (seeded) is held out.

Features: the encoder (dense backend, nothing masked) averaged over all positions. Probe: multinomial
logistic regression on standardised features (full-batch L-BFGS with L2 ``--wd``). By default the same
architecture with the checkpoint's own random initialisation (its config's init and seed) is probed
beside it, so the report shows what pretraining added.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import zipfile

import numpy as np
import torch
import torch.nn.functional as F

from mmearth_kernels.models.convnextv2 import ConvNeXtV2Encoder
from mmearth_kernels.interop import export_dense, save_file
from mmearth_kernels.models.mpmae import MPMAE
from mmearth_kernels.models.registry import reference_backend
from mmearth_kernels.tasks import PIXEL_TASKS, resolve_tasks

LABELS = ("dominant_landcover", "elevation_band", "biome", "eco_region")
# elevation_band: the tile's mean ASTER elevation in units of the dataset's elevation std, cut at
# -0.5 and +0.5 (lower / typical / higher than the dataset's mean). Elevation is not in the input:
# it is visible in Sentinel-2 only through vegetation and land cover, which is what the ASTER pretext
# task teaches the encoder to read.
ELEVATION_CUTS = (-0.5, 0.5)
_TARGET_OF = {"dominant_landcover": "esa_worldcover", "elevation_band": "aster"}
SPLITS = ("train", "val", "test")


# -- encoders -----------------------------------------------------------------------------------
class ProbeError(ValueError):
    """A mistake in the probe's options or inputs: the message names the option; the CLI prints it as one line."""


_CONFIG_KEYS = ("model", "patch_size", "crop", "decoder", "init", "seed", "tasks")


def _load_trainer_checkpoint(path: str) -> dict:
    """A trainer checkpoint, loaded safely (``train.checkpoint.load_checkpoint``: no code from the file runs);
    FileNotFoundError when there is none, a ProbeError for a damaged or foreign file."""
    from .checkpoint import CheckpointError, load_checkpoint

    if not os.path.isfile(path):
        raise FileNotFoundError(f"--checkpoint: no file at {path}")
    try:
        ck = load_checkpoint(path)
    except CheckpointError as e:
        raise ProbeError(f"--checkpoint: {e}") from None
    cfg = ck.get("config")
    if not isinstance(ck.get("model"), dict) or not isinstance(cfg, dict) or any(k not in cfg for k in _CONFIG_KEYS):
        raise ProbeError(f"--checkpoint {path}: expected a trainer checkpoint (a 'model' state dict and its 'config' "
                         f"with {', '.join(_CONFIG_KEYS)}), got keys {sorted(map(str, ck))[:6]}")
    return ck


def encoder_from_checkpoint(path: str, img_size: int, random_init: bool = False) -> ConvNeXtV2Encoder:
    """The checkpoint's encoder on the reference (dense) backend for ``img_size`` inputs (fully convolutional, so any
    multiple of the patch size works). ``random_init``: the same architecture initialised exactly as the
    run that wrote the checkpoint started (its init mode and seed), not its trained weights."""
    ck = _load_trainer_checkpoint(path)
    cfg = ck["config"]
    stem = cfg.get("stem", "mmearth")  # checkpoints before --stem: the MMEarth stem
    enc = ConvNeXtV2Encoder(cfg["model"], img_size=img_size, patch_size=cfg["patch_size"], stem=stem,
                            backend=reference_backend())
    if random_init:
        torch.manual_seed(cfg["seed"])  # rank 0's seed: the weights the run started from
        tasks = cfg["tasks"]
        start = MPMAE(cfg["model"], img_size=cfg["crop"], patch_size=cfg["patch_size"], decoder=cfg["decoder"],
                      decoder_dim=cfg.get("decoder_dim", 512),  # checkpoints before --decoder-dim: 512
                      tasks=resolve_tasks(tasks), init=cfg["init"], backend=reference_backend(), stem=stem)
        state = {k[len("encoder."):]: v for k, v in start.state_dict().items() if k.startswith("encoder.")}
    else:
        state = {k[len("encoder."):]: v for k, v in ck["model"].items() if k.startswith("encoder.")}
    try:
        enc.load_state_dict(state)
    except RuntimeError as e:
        raise ProbeError(f"--checkpoint {path}: its encoder weights do not fit its own config "
                         f"({str(e).splitlines()[0]})") from None
    return enc.eval()


def export_encoder(checkpoint: str, out: str, layout: str = "mmearth") -> dict:
    """Write the trained encoder as a dense ConvNeXt V2 ``state_dict``: a bare state dict with the metadata in
    the header when ``out`` ends in ``.safetensors`` (timm: ``model.load_state_dict(load_file(out))``), else
    ``{"model": ..., "meta": ...}`` with torch.save. Never over an existing file."""
    ck = _load_trainer_checkpoint(checkpoint)
    cfg = ck["config"]
    enc = encoder_from_checkpoint(checkpoint, cfg["crop"])
    meta = {"size": cfg["model"], "patch_size": cfg["patch_size"], "in_chans": enc.in_chans, "layout": layout,
            "stem": enc.stem.kind, "step": ck.get("step"), "source": os.path.abspath(checkpoint)}
    if layout == "timm":
        meta["timm"] = (f"timm.create_model('convnextv2_{cfg['model']}', num_classes=0, "
                        f"patch_size={cfg['patch_size'] // 8}, in_chans={enc.in_chans})")
    if os.path.exists(out):
        raise FileExistsError(f"--export: {out} exists; not overwriting it")
    save_file(export_dense(enc, layout), out, {k: str(v) for k, v in meta.items()})
    return meta


# -- labelled data ------------------------------------------------------------------------------
def _labels_from_targets(batch: dict, label: str) -> torch.Tensor:
    if label == "dominant_landcover":
        lc = batch["esa_worldcover"].flatten(1)                          # [B, H*W], -1 = no data
        counts = F.one_hot(lc.clamp_min(0), PIXEL_TASKS["esa_worldcover"]).mul_((lc >= 0)[..., None]).sum(1)
        return torch.where(counts.sum(1) > 0, counts.argmax(1), -1)
    if label == "elevation_band":
        elev = batch["aster"][:, 0].flatten(1)                            # normalised; NaN = no data
        valid = elev.isfinite()
        mean = elev.nan_to_num(0).sum(1) / valid.sum(1).clamp_min(1)
        band = torch.bucketize(mean, torch.tensor(ELEVATION_CUTS, dtype=mean.dtype))
        return torch.where(valid.any(1), band, -1)
    y = batch[label]
    if y.dim() == 2:  # label distributions (train.data): a row of one class is that class; a row marking several
        # (--label-policy soft reads them; torchgeo's fixtures have them) or none is not one label: unlabelled
        return torch.where(y.amax(1) == 1, y.argmax(1), -1)
    return y.long()


def load_mmearth(stem: str, label: str, split: str, limit: int = 0, crop: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    from .data import MMEarthDataset

    if label not in LABELS:
        raise ProbeError(f"--label must be one of {', '.join(LABELS)}, got {label!r}")
    target = _TARGET_OF.get(label, label)
    ds = MMEarthDataset(stem, split=split, targets=(target,), crop=crop)  # crop: seeded, one per tile
    if split == "train":
        ds.require_rows("the probe's fit")
    n = len(ds) if not limit else min(limit, len(ds))
    xs, ys = [], []
    for s in range(0, n, 128):
        batch = ds.read_batch(list(range(s, min(n, s + 128))))
        xs.append(batch["input"])
        ys.append(_labels_from_targets(batch, label))
    if not xs:  # an empty split (e.g. a probe set made with --splits 0.5,0,0.5 has no val rows)
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(xs), torch.cat(ys)


def load_arrays(path: str, val_fraction: float, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``x``/``y``[/``split``] from .npz or .h5, as {split: (x, y)}; a ProbeError naming ``--data`` for a
    missing, unreadable or malformed file."""
    if not os.path.isfile(path):
        raise ProbeError(f"--data: no file at {path}")
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        else:
            import h5py

            with h5py.File(path, "r") as f:
                arrays = {k: f[k][()] for k in f.keys()}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ProbeError(f"--data {path}: not a readable {'.npz' if path.endswith('.npz') else 'HDF5'} file "
                         f"(truncated or another kind of file?): {str(e).splitlines()[0] if str(e) else e!r}") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise ProbeError(f"--data {path}: needs arrays 'x' [N, C, H, W] and 'y' [N]; has {sorted(arrays)}")
    xa, ya = np.asarray(arrays["x"]), np.asarray(arrays["y"])
    if xa.ndim != 4 or ya.shape != (xa.shape[0],):
        raise ProbeError(f"--data {path}: x must be [N, C, H, W] and y [N], got {xa.shape} and {ya.shape}")
    for key, a in (("y", ya), ("split", np.asarray(arrays.get("split", ya)))):  # whole numbers, stored as ints or not
        if a.dtype.kind not in "iu" and not (a.dtype.kind == "f" and np.isfinite(a).all() and (a == np.round(a)).all()):
            raise ProbeError(f"--data {path}: {key} must hold integers (class labels), got {a.dtype} values such as "
                             f"{a.ravel()[:3].tolist()}")
    if xa.dtype.kind not in "biuf":
        raise ProbeError(f"--data {path}: x must hold numbers, got {xa.dtype}")
    x, y = torch.from_numpy(np.asarray(xa, np.float32)), torch.from_numpy(ya.astype(np.int64))
    if "split" in arrays:
        split = torch.from_numpy(np.asarray(arrays["split"]).astype(np.int64))
        if split.shape != y.shape or not ((split >= 0) & (split < len(SPLITS))).all():
            raise ProbeError(f"--data {path}: split must be [N] of 0 (train), 1 (val), 2 (test)")
    else:
        g = torch.Generator().manual_seed(seed)
        split = (torch.rand(len(y), generator=g) < val_fraction).long()
    return {name: (x[split == i], y[split == i]) for i, name in enumerate(SPLITS) if (split == i).any()}


# -- features and the probe ---------------------------------------------------------------------
@torch.no_grad()
def extract_features(encoder: ConvNeXtV2Encoder, x: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Global-average-pooled encoder features ``[N, C]`` (nothing masked)."""
    if x.shape[1] != encoder.in_chans or x.shape[2] != encoder.img_size or x.shape[3] != encoder.img_size:
        raise ValueError(f"inputs must be [N, {encoder.in_chans}, {encoder.img_size}, {encoder.img_size}], "
                         f"got {tuple(x.shape)}")
    return torch.cat([encoder(x[s:s + batch]).float().mean(dim=(2, 3)) for s in range(0, len(x), batch)])


WD_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


class LinearProbe:
    """Multinomial logistic regression on standardised features (rows with label -1 are ignored).

    ``wd=None`` picks the L2 penalty from ``WD_GRID`` on a seeded 20 % hold-out of the training rows, then
    refits on all of them (features often outnumber what a small labelled set supports)."""

    def __init__(self, wd: float | None = None, iters: int = 300):
        self.wd, self.iters = wd, iters
        self.chosen_wd = wd

    def fit(self, feats: torch.Tensor, labels: torch.Tensor) -> "LinearProbe":
        if self.wd is not None:
            return self._fit(feats, labels, self.wd)
        keep = labels >= 0
        feats, labels = feats[keep], labels[keep]
        hold = torch.rand(len(labels), generator=torch.Generator().manual_seed(0)) < 0.2
        fit, held = (feats[~hold], labels[~hold]), (feats[hold], labels[hold])
        if hold.any() and (~hold).any():
            scores = {wd: LinearProbe(wd, self.iters)._fit(*fit, wd).accuracy(*held) for wd in WD_GRID}
        else:  # too few rows to hold any out
            scores = {1e-2: 0.0}
        self.chosen_wd = max(scores, key=lambda wd: (scores[wd], wd))  # ties: the stronger penalty
        return self._fit(feats, labels, self.chosen_wd)

    def _fit(self, feats: torch.Tensor, labels: torch.Tensor, wd: float) -> "LinearProbe":
        keep = labels >= 0
        f, y = feats[keep].double(), labels[keep]
        if len(y) == 0:
            raise ValueError("no labelled training rows")
        self.mean, self.std = f.mean(0), f.std(0).clamp_min(1e-6)
        z = (f - self.mean) / self.std
        self.classes = int(labels.max()) + 1
        self.linear = torch.nn.Linear(z.shape[1], self.classes, dtype=torch.float64)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)
        opt = torch.optim.LBFGS(self.linear.parameters(), lr=1.0, max_iter=self.iters, history_size=20,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(self.linear(z), y) + wd * self.linear.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        return self

    @torch.no_grad()
    def predict(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear((feats.double() - self.mean) / self.std).argmax(1)

    def accuracy(self, feats: torch.Tensor, labels: torch.Tensor) -> float:
        keep = labels >= 0
        return float((self.predict(feats[keep]) == labels[keep]).double().mean()) if keep.any() else float("nan")


def probe(checkpoint: str, data: dict[str, tuple[torch.Tensor, torch.Tensor]], baseline: bool = True,
          wd: float | None = None) -> dict:
    """Fit on ``data["train"]``, score every split; with ``baseline``, also the random-init encoder."""
    if "train" not in data:
        raise ProbeError("--data: the labelled set has no training rows")
    img = data["train"][0].shape[-1]
    ytr = data["train"][1]
    if not (ytr >= 0).any():
        raise ProbeError("--data: no labelled row in the training rows (every label is -1, unknown)")
    patch = _load_trainer_checkpoint(checkpoint)["config"]["patch_size"]
    for k, (x, _) in data.items():
        if x.dim() != 4 or x.shape[1] != 12 or x.shape[2] != x.shape[3] or x.shape[2] % patch:
            raise ProbeError(f"--data: split {k}: inputs must be [N, 12, H, H] with H a multiple of the checkpoint's "
                             f"patch size {patch} (--crop for MMEarth files), got {tuple(x.shape)}")
    majority = torch.bincount(ytr[ytr >= 0]).argmax()
    report = {"checkpoint": os.path.abspath(checkpoint), "rows": {k: len(v[1]) for k, v in data.items()},
              "majority_class": {k: float((v[1][v[1] >= 0] == majority).double().mean()) for k, v in data.items()}}
    for name, rand in (("pretrained", False), ("random_init", True))[: 2 if baseline else 1]:
        enc = encoder_from_checkpoint(checkpoint, img, random_init=rand)
        feats = {k: extract_features(enc, x) for k, (x, _) in data.items()}
        clf = LinearProbe(wd=wd).fit(feats["train"], ytr)
        report[name] = {k: clf.accuracy(feats[k], y) for k, (_, y) in data.items()}
        report[name]["wd"] = clf.chosen_wd
    return report


def _check_output(ap, option: str, path: str, must_not_exist: bool) -> None:
    """An output path the run will write at its end, checked before the work: not a folder, in a folder that
    exists and can be written (and for ``--export``, not there yet)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        ap.error(f"{option} {path} is a folder; give a file name")
    if must_not_exist and os.path.exists(path):
        ap.error(f"{option} {path} exists; not overwriting it")
    if not os.path.isdir(folder):
        ap.error(f"{option} {path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        ap.error(f"{option} {path}: no permission to write in {folder}")


def _check_args(ap, args) -> None:
    for name in ("limit", "crop", "seed"):
        if getattr(args, name) < 0:
            ap.error(f"--{name} must be an int >= 0, got {getattr(args, name)}")
    if not 0 <= args.val_fraction < 1:
        ap.error(f"--val-fraction must be a number in [0, 1), got {args.val_fraction}")
    if args.wd is not None and not (math.isfinite(args.wd) and args.wd >= 0):
        ap.error(f"--wd must be a finite number >= 0, got {args.wd}")
    if args.json:
        _check_output(ap, "--json", args.json, must_not_exist=False)
    if args.export:
        _check_output(ap, "--export", args.export, must_not_exist=True)
    elif not args.data:
        ap.error("--data is required (or --export)")


def main(argv=None) -> None:
    from .data import DataError
    from .data.cli import ArgumentParser
    from .files import WriteError, write_atomically

    ap = ArgumentParser(prog="mmearth-probe", description=__doc__.split("\n\n")[0],
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a trainer checkpoint (e.g. runs/demo/last.pt)")
    ap.add_argument("--export", default="", help="write the encoder as a dense ConvNeXt V2 state_dict here and exit")
    ap.add_argument("--layout", default="mmearth", choices=("mmearth", "timm"), help="state_dict layout for --export")
    ap.add_argument("--data", default="", help="MMEarth file stem, or .npz/.h5 with x, y [, split]")
    ap.add_argument("--label", default="dominant_landcover", choices=LABELS, help="label of an MMEarth file")
    ap.add_argument("--limit", type=int, default=0, help="use at most this many rows per split (0 = all)")
    ap.add_argument("--crop", type=int, default=0, help="MMEarth files: a seeded crop of this side per tile "
                                                         "(a multiple of the patch size; 0 = the full tile)")
    ap.add_argument("--val-fraction", type=float, default=0.2, help="held out from arrays without a split")
    ap.add_argument("--wd", type=float, default=None,
                    help=f"L2 penalty of the logistic regression (default: chosen from {WD_GRID} on a hold-out)")
    ap.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the random-init encoder")
    ap.add_argument("--seed", type=int, default=0, help="seed of the --val-fraction split")
    ap.add_argument("--json", default="", help="also write the report here")
    args = ap.parse_args(argv)
    _check_args(ap, args)
    try:  # a user's mistake (options, files) is one line and exit 2; anything else keeps its traceback
        _load_trainer_checkpoint(args.checkpoint)  # before the data: a bad checkpoint is said at once
    except (FileNotFoundError, ProbeError) as e:
        ap.error(str(e))
    try:
        report = _run(args)
    except DataError as e:
        ap.error(f"--data: {e}")
    except (ProbeError, WriteError) as e:
        ap.error(str(e))
    if args.json and report is not None:
        try:
            write_atomically(args.json, lambda f: f.write(json.dumps(report, indent=1).encode()))
        except WriteError as e:
            ap.error(f"--json: {e}")


def _run(args) -> dict | None:
    """The probe (or the export) the options ask for; returns the report (None for an export)."""
    if args.export:
        meta = export_encoder(args.checkpoint, args.export, args.layout)
        print(f"[probe] wrote {args.export}: ConvNeXt V2 {meta['size']} encoder, {args.layout} layout"
              + (f"; load it into {meta['timm']}" if "timm" in meta else ""), file=sys.stderr)
        return None
    if args.data.endswith((".npz", ".h5")) and not os.path.exists(args.data[:-3] + "_splits.json"):
        data = load_arrays(args.data, args.val_fraction, args.seed)
        if args.limit:
            data = {k: (x[:args.limit], y[:args.limit]) for k, (x, y) in data.items()}
    else:
        stem = args.data[:-3] if args.data.endswith(".h5") else args.data
        data = {s: load_mmearth(stem, args.label, s, args.limit, args.crop or None) for s in SPLITS}
        data = {k: v for k, v in data.items() if len(v[1])}
    report = probe(args.checkpoint, data, baseline=args.baseline, wd=args.wd)
    print(f"linear probe ({args.label if not args.data.endswith('.npz') else 'y'}); rows "
          + ", ".join(f"{k} {n}" for k, n in report["rows"].items()))
    print(f"{'encoder':<14}" + "".join(f"{k:>9}" for k in data))
    for name in ("pretrained", "random_init", "majority_class"):
        if name in report:
            print(f"{name:<14}" + "".join(f"{report[name][k]:>9.3f}" for k in data))
    return report


if __name__ == "__main__":
    main()
