"""Training configuration: one dataclass, presets, and an argparse CLI generated from it.

Every field's ``help`` is its documentation (``python -m train --help``). A preset fills the fields;
any option given on the command line overrides it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field

from mmearth_kernels.models.registry import backends_help, default_backend
from mmearth_kernels.ops.registry import impls_help

from .data.cli import ArgumentParser


def _f(default, help, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    # data
    data: str = _f("", "MMEarth file stem (path without .h5); empty with --preset demo: synthetic data made on first "
                       "use in --data-dir")
    data_dir: str = _f("~/.cache/mmearth-kernels/demo-data", "where the demo's synthetic data and cache are made")
    cache: bool = _f(True, "read through the uncompressed cache (built on first use next to the data)")
    crop: int = _f(56, "random crop side (64 -> 56, 128 -> 112)")
    workers: int = _f(-1, "DataLoader worker processes: -1 = auto (0 on CPU; on GPU the process's CPUs minus one, at "
                          "most 16, pinned memory), 0 = load in the training process")
    # model
    model: str = _f("atto", "ConvNeXt V2 size: atto, femto, pico, nano, tiny, base, large, huge")
    patch_size: int = _f(8, "mask patch size in pixels (8 at 56 px, 16 at 112 px)")
    tasks: str = _f("all", "pretext tasks: all, s2, pixel, image, or a comma-separated list")
    backend: str = _f(default_backend(), backends_help())  # both from the backend registry
    impl: str = _f("auto", impls_help())
    grn_stats: str = _f("per_sample", "GRN statistics: per_sample (paper/JAX) or batch (released code)")
    decoder: str = _f("shared", "decoder: shared (one block for all tasks, as released) or per_task")
    decoder_dim: int = _f(512, "decoder width (512 as released)")
    mask_ratio: float = _f(0.6, "FCMAE mask ratio (keeps int(49 * (1 - ratio)) patches)")
    loss_weighting: str = _f("uncertainty", "uncertainty (sum exp(-s) L + s) or unweighted")
    label_policy: str = _f("soft", "biome / eco-region rows that mark several classes (torchgeo's MMEarth fixture "
                                   "files hold such rows): soft = the row is a label distribution over its classes "
                                   "(cross-entropy with soft targets; a one-hot row is the usual hard label), strict = "
                                   "refuse the file")
    stem: str = _f("mmearth", "encoder stem: mmearth (3x3 conv at full resolution, LN, GELU, depthwise, LN; as "
                              "released) or original (FCMAE's patchify conv: the stem timm's ConvNeXt V2 has)")
    init: str = _f("mmearth", "weight init: mmearth (as released, std-1.0 quirk) or standard (std 0.02)")
    init_from: str = _f("", "start the encoder from local weights (a new run only; --resume restores its own): "
                            "timm:FILE, a timm ConvNeXt V2 state dict (.safetensors or .pth, e.g. the hub's "
                            "model.safetensors; needs --stem original; the stem is adapted to 12 bands and the patch), "
                            "or mmearth:FILE, a released MMEarth/FCMAE sparse checkpoint (checkpoint-199.pth)")
    # optimisation
    batch_size: int = _f(16, "samples per step per process (before accumulation)")
    accum: int = _f(1, "gradient accumulation steps per optimiser step")
    lr: float = _f(0.0, "peak learning rate; 0 = blr * effective batch / 256")
    blr: float = _f(1.5e-4, "base learning rate per 256 samples (used when --lr is 0)")
    weight_decay: float = _f(0.05, "AdamW weight decay (none on biases, norms, GRN and the uncertainty weights)")
    warmup_steps: int = _f(0, "linear warm-up steps (0: use --warmup-epochs)")
    warmup_epochs: float = _f(40.0, "linear warm-up in epochs (when --warmup-steps is 0)")
    epochs: float = _f(200.0, "length of the cosine schedule in epochs (ignored when --steps is set)")
    steps: int = _f(0, "total optimiser steps (0: --epochs worth)")
    clip_grad: float = _f(0.0, "gradient-norm clipping (0 = off, as upstream)")
    precision: str = _f("auto", "auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16")
    compile: bool = _f(False, "torch.compile the model")
    cuda_graphs: bool = _f(False, "capture the whole training step (forward, backward, optimiser, accumulation) as "
                                  "CUDA graphs after 3 eager warm-up steps and replay them (GPU, one process; on CPU "
                                  "it is skipped with a message)")
    channels_last: bool = _f(False, "channels_last memory format for the model and input (dense backend on GPU)")
    seed: int = _f(0, "random seed (each rank adds its rank)")
    device: str = _f("auto", "auto, cpu or cuda")
    # output
    out: str = _f("runs/demo", "output directory: checkpoints, metrics.jsonl, reconstructions")
    log_every: int = _f(10, "steps between metrics records")
    ckpt_every: int = _f(100, "steps between checkpoints (and one at the end)")
    png_every: int = _f(100, "steps between reconstruction pictures (0 = never)")
    resume: str = _f("", "checkpoint to resume from, or 'auto' for <out>/last.pt")
    allow_resume_changes: bool = _f(False, "resume even though batch size, accumulation, seed or process count differ "
                                           "from the checkpoint's (the run then differs from an uninterrupted one)")
    stop_after: int = _f(0, "end this run after N optimiser steps, writing a checkpoint (time-limited jobs: "
                            "--resume auto continues the same schedule)")
    progress: bool = _f(True, "show a progress bar")
    # profiling (train/telemetry.py, profiling.py, health.py; README "Profile your run")
    profile_steps: str = _f("", "A:B: record optimiser steps A..B (1-based, as logged) with torch.profiler into "
                                "<out>/profile/ (trace.json.gz for Perfetto / Holistic Trace Analysis, ops.md: time by "
                                "category and top ops); the run goes on normally after B")
    profile_memory: bool = _f(False, "with --profile-steps: also a CUDA memory snapshot (memory_snapshot.pickle, for "
                                     "pytorch.org/memory_viz; on CPU the profiler's memory events)")
    peak_tflops: float = _f(0.0, "the peak TFLOP/s MFU is measured against (0: the GPU's datasheet peak for the run's "
                                 "precision from train/hardware.py, or on CPU a matmul measured at start)")
    health_every: int = _f(10, "representation health (effective rank and channel std of the encoder's features on a "
                              "fixed held batch) every N logging points (0 = off)")
    health_samples: int = _f(32, "images in the held batch of the health check")
    dry_run: bool = _f(False, "resolve the configuration, build the model, print parameters, FLOPs per step (model "
                              "and executed), activation memory, data size and steps per epoch, then exit without "
                              "training or writing anything")


PRESETS = {
    # 200 steps of atto at 56/8 on synthetic MMEarth64-format data: under 3 minutes on 2 CPU cores. The
    # decoder is 256 wide instead of 512 (a quarter of the decoder block's FLOPs: the step is matmul-bound
    # on CPU); in a linear probe the encoder gains as much as with 512 (README, "linear probe").
    "demo": dict(model="atto", patch_size=8, crop=56, tasks="all", decoder_dim=256, batch_size=12, lr=2e-3,
                 warmup_steps=20, steps=200, log_every=10, ckpt_every=100, png_every=100, out="runs/demo"),
    # The paper recipe on MMEarth64: effective batch 4096 (here by accumulation on one process).
    "mmearth64-atto": dict(model="atto", patch_size=8, crop=56, batch_size=256, accum=16, blr=1.5e-4, lr=0.0,
                           warmup_epochs=40, epochs=200, weight_decay=0.05, out="runs/mmearth64-atto"),
    # MMEarth at 128 px: crop 112, patch 16.
    "mmearth-atto-112": dict(model="atto", patch_size=16, crop=112, batch_size=256, accum=16, blr=1.5e-4, lr=0.0,
                             warmup_epochs=40, epochs=200, out="runs/mmearth-atto-112"),
}


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(
        prog="mmearth-pretrain", description="MMEarth multi-pretext MAE pretraining (ConvNeXt V2, FCMAE).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="start from a preset (" + "; ".join(f"{k}" for k in PRESETS) + "); options override it")
    for f in dataclasses.fields(TrainConfig):
        name = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            ap.add_argument(name, action=argparse.BooleanOptionalAction, default=None, help=f.metadata["help"])
        else:
            typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            ap.add_argument(name, type=typ, default=None, help=f"{f.metadata['help']} (default: {f.default!r})")
    return ap


class ConfigError(ValueError):
    """A bad option: the message names it (``--batch-size``) and says what is expected."""


def _opt(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_types(cfg: TrainConfig, need) -> None:
    """The types first (a dataclass does not check them). numpy scalars become the Python numbers they hold
    (the config is saved in checkpoints, which load plain types only); a bool is not a number, a float is not
    an int (even 7.0), an int is a fine float."""
    import numbers

    for f in dataclasses.fields(TrainConfig):
        v, t = getattr(cfg, f.name), f.type if isinstance(f.type, str) else f.type.__name__
        is_bool = isinstance(v, bool) or type(v).__name__ in ("bool", "bool_")  # numpy's bool (2.x, 1.x)
        ok = {"bool": is_bool, "int": not is_bool and isinstance(v, numbers.Integral),
              "float": not is_bool and isinstance(v, numbers.Real), "str": isinstance(v, str)}[t]
        need(ok, f.name, {"bool": "True or False", "int": "an int", "float": "a number", "str": "a string"}[t])
        setattr(cfg, f.name, {"bool": bool, "int": int, "float": float, "str": str}[t](v))


def _check_paths(cfg: TrainConfig) -> None:
    """Folders the run writes into must be folders that can be made or written, found out now rather than
    after the data and the model are ready."""
    for name, path in [("out", cfg.out)] + [("data_dir", os.path.expanduser(cfg.data_dir))] * (not cfg.data):
        if os.path.exists(path) and not os.path.isdir(path):
            raise ConfigError(f"{_opt(name)} {path} is a file; it must be a folder (made if missing)")
        there = os.path.abspath(path)
        while not os.path.exists(there):
            there = os.path.dirname(there)
        if not os.path.isdir(there):
            raise ConfigError(f"{_opt(name)} {path}: {there} is a file, so the folder cannot be made there")
        if not os.access(there, os.W_OK | os.X_OK):
            raise ConfigError(f"{_opt(name)} {path}: no permission to write in {there}")


def validate(cfg: TrainConfig) -> TrainConfig:
    """Every option checked before anything runs; raises ConfigError naming the first bad one."""
    from mmearth_kernels.models.convnextv2 import GRN_STATS, SIZES, STEMS
    from mmearth_kernels.models.registry import BACKENDS
    from mmearth_kernels.models.mpmae import check_mask_ratio
    from mmearth_kernels.tasks import resolve_tasks
    from mmearth_kernels.ops import IMPLS

    from .data.reader import LABEL_POLICIES

    def need(ok: bool, name: str, what: str):
        if not ok:
            raise ConfigError(f"{_opt(name)} must be {what}, got {getattr(cfg, name)!r}")

    _check_types(cfg, need)
    for name in ("batch_size", "accum", "log_every", "ckpt_every", "patch_size", "decoder_dim", "crop"):
        need(getattr(cfg, name) >= 1, name, "a positive int")
    for name in ("png_every", "steps", "stop_after", "warmup_steps"):
        need(getattr(cfg, name) >= 0, name, "an int >= 0")
    for name in ("lr", "weight_decay", "clip_grad", "warmup_epochs"):
        v = getattr(cfg, name)
        need(v == v and 0 <= v < float("inf"), name, "a finite number >= 0")
    need(cfg.blr == cfg.blr and 0 < cfg.blr < float("inf"), "blr", "a finite number > 0")
    need(cfg.steps > 0 or (cfg.epochs == cfg.epochs and 0 < cfg.epochs < float("inf")), "epochs",
         "a finite number > 0 (or give --steps)")
    need(cfg.workers >= -1, "workers", "-1 (auto), 0 or a positive int")
    need(0.0 <= cfg.mask_ratio <= 1.0, "mask_ratio", "in [0, 1]")
    need(0 <= cfg.seed < 2**63, "seed", "an int in [0, 2**63)")
    need(cfg.label_policy in LABEL_POLICIES, "label_policy", " or ".join(LABEL_POLICIES))
    need(cfg.patch_size % 8 == 0, "patch_size", "a multiple of 8")
    need(cfg.crop % cfg.patch_size == 0, "crop", f"a multiple of --patch-size {cfg.patch_size}")
    need(cfg.model in SIZES, "model", f"one of {', '.join(SIZES)}")
    need(cfg.backend in BACKENDS, "backend", f"one of {', '.join(BACKENDS)}")
    need(cfg.impl in IMPLS, "impl", f"one of {', '.join(IMPLS)}")
    need(cfg.grn_stats in GRN_STATS, "grn_stats", f"one of {', '.join(GRN_STATS)}")
    need(cfg.decoder in ("shared", "per_task"), "decoder", "shared or per_task")
    need(cfg.loss_weighting in ("uncertainty", "unweighted"), "loss_weighting", "uncertainty or unweighted")
    need(cfg.init in ("mmearth", "standard"), "init", "mmearth or standard")
    need(cfg.stem in STEMS, "stem", f"one of {', '.join(STEMS)}")
    if cfg.init_from:
        kind, _, path = cfg.init_from.partition(":")
        need(kind in ("timm", "mmearth") and bool(path), "init_from",
             "timm:FILE or mmearth:FILE (local weights; nothing is downloaded)")
        if not os.path.isfile(os.path.expanduser(path)):
            raise ConfigError(f"--init-from: no file at {path} (weights are read from a local file, never downloaded: "
                              f"e.g. `huggingface-cli download timm/convnextv2_atto.fcmae_ft_in1k model.safetensors`)")
        if kind == "timm" and cfg.stem != "original":
            raise ConfigError("--init-from timm:...: timm's ConvNeXt V2 has the original (patchify) stem; add "
                              "--stem original")
    need(cfg.device in ("auto", "cpu", "cuda"), "device", "auto, cpu or cuda")
    if cfg.precision == "fp16":
        raise ConfigError("--precision fp16 is not supported (it would need loss scaling): use bf16, which needs none, "
                          "or fp32")
    need(cfg.precision in ("auto", "fp32", "bf16"), "precision", "auto, fp32 or bf16")
    try:
        tasks = resolve_tasks(cfg.tasks)
    except ValueError as e:
        raise ConfigError(f"--tasks: {e}") from None
    try:
        check_mask_ratio(cfg.mask_ratio, cfg.crop // cfg.patch_size, tasks)
    except ValueError as e:
        raise ConfigError(f"--mask-ratio: {e} (--crop {cfg.crop} / --patch-size {cfg.patch_size}, --tasks "
                          f"{cfg.tasks})") from None
    _check_paths(cfg)
    _check_profiling(cfg, need)
    return cfg


def parse_steps(spec: str) -> tuple[int, int]:
    """``"A:B"`` -> (A, B) with 1 <= A <= B; ValueError naming what is wrong otherwise."""
    first, sep, last = spec.partition(":")
    try:
        a, b = int(first), int(last)
    except ValueError:
        a = b = None
    if not sep or a is None or not 1 <= a <= b:
        raise ValueError(f"must be A:B, two optimiser steps with 1 <= A <= B (e.g. 5:8), got {spec!r}")
    return a, b


def _check_profiling(cfg: TrainConfig, need) -> None:
    if cfg.profile_steps:
        try:
            first, last = parse_steps(cfg.profile_steps)
        except ValueError as e:
            raise ConfigError(f"--profile-steps {e}") from None
        if cfg.steps and last > cfg.steps:
            raise ConfigError(f"--profile-steps {cfg.profile_steps}: step {last} is after the run's last step "
                              f"(--steps {cfg.steps})")
    need(not cfg.profile_memory or bool(cfg.profile_steps), "profile_memory", "used with --profile-steps A:B")
    need(cfg.peak_tflops == cfg.peak_tflops and 0 <= cfg.peak_tflops < float("inf"), "peak_tflops",
         "a finite number > 0 (0 = from the table or measured)")
    need(cfg.health_every >= 0, "health_every", "an int >= 0 (0 = off)")
    need(cfg.health_samples >= 2, "health_samples", "an int >= 2")


def parse_config(argv=None) -> TrainConfig:
    args = build_parser().parse_args(argv)
    values = dict(PRESETS[args.preset]) if args.preset else {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name)
        if v is not None:
            values[f.name] = v
    return validate(TrainConfig(**values))
