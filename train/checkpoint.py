"""Training checkpoints: written atomically, loaded safely, checked before a run resumes from them.

A checkpoint is a dict ``{"model", "optimizer", "config", "step", "epoch", "position", "world", "rng_cpu"
[, "rng_cuda"]}`` written by :func:`save_checkpoint` (``train.files.write_atomically``: a kill or a full
disk leaves the previous file). :func:`load_checkpoint` uses ``torch.load(weights_only=True)``, which
executes no code from the file, and turns every failure into a :class:`CheckpointError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import zipfile

import torch

from mmearth_kernels.interop.files import ALLOWED_GLOBALS

from .config import TrainConfig
from .files import write_atomically

# Options that define the weights' shapes: a checkpoint cannot be loaded into a model built otherwise.
MODEL_OPTIONS = ("model", "patch_size", "crop", "tasks", "decoder", "decoder_dim", "stem")
_BEFORE_OPTION = {"stem": "mmearth"}  # what checkpoints written before an option existed were trained with
# Options that define the data order, masks and step size: resuming with others is not the same run.
RUN_OPTIONS = ("batch_size", "accum", "seed")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def save_checkpoint(path: str, model, opt, cfg: TrainConfig, state: dict) -> None:
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "config": dataclasses.asdict(cfg),
            "rng_cpu": torch.get_rng_state(), **state}
    if torch.cuda.is_available():
        ckpt["rng_cuda"] = torch.cuda.get_rng_state_all()
    write_atomically(path, lambda f: torch.save(ckpt, f))


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint at {path}")
    unreadable = f"{path} is not a readable PyTorch checkpoint (truncated, empty or another kind of file)"
    if not zipfile.is_zipfile(path):  # every torch.save since 1.6 writes a zip archive
        raise CheckpointError(unreadable)
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):  # upstream's `args`: its own message below
            ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).splitlines()
        why = next((line.strip() for line in lines if "Unsupported global" in line or "GLOBAL" in line),
                   _first_line(e))
        raise CheckpointError(f"{path} holds objects that safe loading refuses (weights_only=True: no code from "
                              f"the file is run): {why}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as e:
        raise CheckpointError(f"{unreadable}: {_first_line(e)}") from None
    if not isinstance(ck, dict):
        raise CheckpointError(f"{path} holds a {type(ck).__name__}, not a checkpoint dict")
    return ck


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def check_resumable(ck: dict, cfg: TrainConfig, world: int, path: str) -> None:
    """That ``ck`` is one of this trainer's checkpoints and this run can continue it exactly."""
    missing = [k for k in ("model", "optimizer", "config", "step", "epoch", "position", "rng_cpu") if k not in ck]
    if missing:
        if "args" in ck and "model" in ck:  # upstream's save_model
            raise CheckpointError(f"--resume: {path} is a released MMEarth/FCMAE checkpoint (upstream's save_model), "
                                  f"not one of this trainer's; start a new run from its encoder with "
                                  f"--init-from mmearth:{path}")
        kind = ("a model export or a released checkpoint (weights without optimiser state)" if "model" in ck
                or any(k.startswith(("encoder.", "stem.", "stages.")) for k in ck) else "not a training checkpoint")
        raise CheckpointError(f"--resume: {path} is {kind}: it lacks {', '.join(missing)}, so a run cannot continue "
                              f"from it; start a new run (--out elsewhere) instead")
    old = ck["config"] if isinstance(ck["config"], dict) else {}
    shape = [(k, old.get(k, _BEFORE_OPTION.get(k)), getattr(cfg, k)) for k in MODEL_OPTIONS
             if old.get(k, _BEFORE_OPTION.get(k)) != getattr(cfg, k)]
    if shape:
        raise CheckpointError(f"--resume: {path} was trained with " + ", ".join(f"--{k.replace('_', '-')} {o!r}"
                              for k, o, _ in shape) + "; this run has " + ", ".join(
                              f"--{k.replace('_', '-')} {n!r}" for k, _, n in shape) +
                              ": the weights do not fit; resume with the checkpoint's options")
    run = [(k, old.get(k), getattr(cfg, k)) for k in RUN_OPTIONS if old.get(k) != getattr(cfg, k)]
    if ck.get("world", world) != world:
        run.append(("processes", ck.get("world"), world))
    if run and not cfg.allow_resume_changes:
        raise CheckpointError(f"--resume: {path} was trained with " + ", ".join(f"{k} {o!r}" for k, o, _ in run) +
                              "; this run has " + ", ".join(f"{k} {n!r}" for k, _, n in run) +
                              ": the data order and step size would differ from the run being resumed; use the "
                              "checkpoint's values, or pass --allow-resume-changes to continue anyway")


def load_state(model, opt, ck: dict, path: str) -> None:
    """Model and optimiser state, with a clear error when they do not fit."""
    try:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"--resume: {path} does not fit this model: {_first_line(e)[:300]}") from None


def trim_metrics(path: str, step: int) -> int:
    """Cut ``metrics.jsonl`` back to the records of steps <= ``step`` (a resumed run rewrites the rest, so
    no step appears twice); returns the number of records dropped. Unreadable lines are dropped too."""
    if not os.path.isfile(path):
        return 0
    kept, dropped = [], 0
    with open(path, "rb") as f:
        for line in f:
            try:
                rec = json.loads(line)
                ok = isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step
            except ValueError:
                ok = False
            if ok:
                kept.append(line if line.endswith(b"\n") else line + b"\n")
            else:
                dropped += 1
    if dropped:
        write_atomically(path, lambda f: f.writelines(kept))
    return dropped


def init_encoder(encoder, spec: str) -> list[str]:
    """``--init-from timm:FILE`` or ``mmearth:FILE``: the encoder's weights from a local file (read safely:
    :func:`mmearth_kernels.interop.load_file`). Returns lines for the log saying what was loaded and adapted."""
    from mmearth_kernels.interop import load_sparse_checkpoint, load_timm

    kind, _, path = spec.partition(":")
    path = os.path.expanduser(path)
    try:
        if kind == "timm":
            report = load_timm(encoder, path)
            return [f"encoder from timm weights {path}"] + report["adapted"] + \
                [f"not used: {', '.join(report['unused'])}"] * bool(report["unused"])
        unused = load_sparse_checkpoint(encoder, path)
        return [f"encoder from the released checkpoint {path} ({len(unused)} decoder/head tensors not used)"]
    except (ValueError, TypeError, OSError, pickle.UnpicklingError) as e:
        raise CheckpointError(f"--init-from {spec}: {e}") from None
