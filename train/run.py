"""The trainer's set-up: a function from the configuration to a :class:`Run` (model, data, optimiser, step,
telemetry, sinks), in the order each part needs the one before it:

device and processes -> the checkpoint to resume (where the data starts) -> data -> model -> optimiser and its
state -> the step (eager, compiled, DDP or CUDA graphs) -> FLOPs, peak and telemetry -> sinks, profiler, health.

``train/loop.py`` then only runs steps and reads the run at logging points.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from mmearth_kernels.host_sync import host_only, sync_point
from mmearth_kernels.masking import num_kept
from mmearth_kernels.models import MPMAE
from mmearth_kernels.models.flops import StepFlops, step_flops
from mmearth_kernels.models.registry import BACKEND_SPECS
from mmearth_kernels.tasks import resolve_tasks

from .batches import DeviceBatches, MicroBatches, default_workers
from .checkpoint import CheckpointError, check_resumable, init_encoder, load_checkpoint, load_state, trim_metrics
from .config import ConfigError, TrainConfig, parse_steps
from .data import MMEarthDataset
from .data.reader import DataError, device_stats
from .files import remove_stale_temps_in
from .hardware import Peak, resolve_peak
from .health import held_batch
from .profiling import StepProfiler
from .sinks import Sinks
from .step import GraphedTrainStep, TrainStep, make_optimizer
from .telemetry import Telemetry


@dataclass
class Run:
    """Everything the loop needs, built by :func:`build_run`."""
    cfg: TrainConfig
    device: str
    rank: int
    world: int
    model: MPMAE
    opt: torch.optim.Optimizer
    stepper: TrainStep
    run_step: object              # the stepper, or its CUDA-graph replay
    ds: MMEarthDataset
    batches: DeviceBatches
    kept: int
    peak_lr: float
    warmup: int
    total: int
    stop_at: int
    step: int                     # where this invocation starts (0, or the resumed step)
    epoch: int
    position: int
    flops: StepFlops              # the model FLOPs of one step (this process)
    executed: StepFlops           # what this backend executes
    peak: Peak
    telemetry: Telemetry
    sinks: Sinks
    profiler: StepProfiler | None = None
    held: dict | None = None      # the health check's fixed batch
    info: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mask(self, step: int, micro: int) -> torch.Tensor:
        return step_mask(self.model, self.cfg, step, micro, self.rank, self.world, self.device)

    def close(self) -> None:
        if self.profiler is not None:
            self.profiler.close()
        self.sinks.close()


def resolve_device(cfg: TrainConfig) -> str:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch")
    return ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device


def setup_distributed(device: str):
    """torchrun sets RANK/WORLD_SIZE: NCCL on GPU, gloo on CPU. A short timeout makes a job whose rank
    died fail instead of hanging in the next collective."""
    if "RANK" not in os.environ:
        return 0, 1
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=int(os.environ.get("MMEARTH_DIST_TIMEOUT", "120"))))
    if device == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def prepare_data(cfg: TrainConfig, rank: int) -> tuple[str, str | None]:
    """The file stem (and cache dir); the demo makes synthetic MMEarth64-format data on first use."""
    stem = cfg.data or demo_stem(cfg)
    if not cfg.data and rank == 0 and not os.path.exists(stem + ".h5"):
        from .data.synthetic import write_dataset

        root = os.path.dirname(stem)
        print(f"[train] making synthetic MMEarth64-format data in {root} (first use only)", file=sys.stderr)
        # gzip level 1: the same arrays as the default level 4 in 3/4 of the time (the noisy synthetic
        # bands barely compress either way), and the demo reads them through the cache anyway
        try:  # an interrupted earlier write of ours is replaced; files of anyone else are not
            write_dataset(root, tiles=2000, size=64, seed=0, stem=os.path.basename(stem), compression_level=1)
        except FileExistsError as e:
            raise DataError(f"--data-dir {root}: {e}; these files were not made by an interrupted demo run, so they "
                            f"are left alone: remove them or pick another --data-dir") from None
    cache = stem + "_cache" if cfg.cache else None
    if cache and rank == 0 and os.path.isfile(stem + ".h5"):
        ensure_cache(stem, cache)
    if dist.is_initialized():
        dist.barrier()
    return stem, cache


def demo_stem(cfg: TrainConfig) -> str:
    return os.path.join(os.path.expanduser(cfg.data_dir), "synthetic_2000_64")


def ensure_cache(stem: str, cache: str) -> None:
    """Build the uncompressed cache on first use, or rebuild it when it is incomplete, damaged or stale (only if
    it is ours: ``build_cache`` checks)."""
    from .data.cache import build_cache, open_cache
    from .data.reader import ALL_TASKS

    why = "first use"
    if os.path.exists(cache):
        try:
            open_cache(cache, stem + ".h5", ALL_TASKS)
            return
        except DataError as e:
            why = str(e)
            print(f"[train] rebuilding the cache: {why}", file=sys.stderr)
    try:
        build_cache(stem, cache, overwrite=os.path.exists(cache))
    except FileExistsError as e:
        raise DataError(f"--cache: {e}") from None


def step_mask(model: MPMAE, cfg: TrainConfig, step: int, micro: int, rank: int, world: int,
              device: str = "cpu") -> torch.Tensor:
    """This rank's slice of the global batch's random mask, drawn on the host from a generator seeded by
    (seed, step, micro-batch): independent of the process count (a 2-process run masks exactly like a
    1-process run at the same global batch), of the RNG state (a resumed run masks exactly like an
    uninterrupted one) and of the device. On a GPU it goes through pinned memory with a non-blocking copy."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence((cfg.seed, step, micro)).generate_state(1)[0]))
    mask, _ = model.random_mask(cfg.batch_size * world, generator=g)
    mask = mask[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]
    if device == "cuda":
        return mask.pin_memory().to(device, non_blocking=True)
    return mask


def build_model(cfg: TrainConfig) -> MPMAE:
    """The MP-MAE the configuration describes, on the host (the weights of a new run: init or --init-from)."""
    with host_only("the model is built and initialised on the host, then moved"):
        return MPMAE(cfg.model, img_size=cfg.crop, patch_size=cfg.patch_size, tasks=resolve_tasks(cfg.tasks),
                     decoder=cfg.decoder, decoder_dim=cfg.decoder_dim, mask_ratio=cfg.mask_ratio,
                     loss_weighting=cfg.loss_weighting, backend=cfg.backend, grn_stats=cfg.grn_stats,
                     impl=cfg.impl, init=cfg.init, stem=cfg.stem)


def count_flops(model: MPMAE, cfg: TrainConfig, kept: int) -> tuple[StepFlops, StepFlops]:
    """(model FLOPs, executed FLOPs) of one optimiser step of this process."""
    model_flops = step_flops(model, cfg.batch_size, kept, cfg.accum)
    all_sites = BACKEND_SPECS[cfg.backend].all_sites  # the dense backends run the encoder on every site
    return model_flops, step_flops(model, cfg.batch_size, kept, cfg.accum, all_sites=all_sites)


def _load_resume(cfg: TrainConfig, world: int) -> dict | None:
    if not cfg.resume:
        return None
    path = os.path.join(cfg.out, "last.pt") if cfg.resume == "auto" else cfg.resume
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume: no checkpoint at {path}")
    ck = load_checkpoint(path)
    check_resumable(ck, cfg, world, path)
    ck["path"] = path
    return ck


def build_run(cfg: TrainConfig) -> Run:
    device = resolve_device(cfg)
    rank, world = setup_distributed(device)
    torch.manual_seed(cfg.seed + rank)
    is_main, on_gpu = rank == 0, device == "cuda"
    graphs = cfg.cuda_graphs and on_gpu
    if cfg.cuda_graphs and not graphs and is_main:
        print(f"[train] --cuda-graphs skipped: CUDA graphs need a CUDA device (running on {device}); "
              "the step runs eagerly", file=sys.stderr)
    if graphs and world > 1:
        raise ConfigError("--cuda-graphs with several processes (torchrun) is not supported yet; drop one of them")
    os.makedirs(cfg.out, exist_ok=True)
    remove_stale_temps_in(cfg.out)  # what a killed run of ours left half-written
    ck = _load_resume(cfg, world)
    step, epoch, position = (ck["step"], ck["epoch"], ck["position"]) if ck else (0, 0, 0)

    # data: on a GPU the loader returns stored values and the batch is normalised on the device after the copy
    stem, cache = prepare_data(cfg, rank)
    ds = MMEarthDataset(stem, split="train", crop=cfg.crop, seed=cfg.seed, cache=cache, normalize=not on_gpu,
                        label_policy=cfg.label_policy)
    ds.require_rows("pretraining (--data)")
    try:
        source = MicroBatches(ds, cfg.batch_size, seed=cfg.seed, rank=rank, world=world, start=(epoch, position),
                              workers=default_workers(device, world) if cfg.workers < 0 else cfg.workers,
                              pin_memory=on_gpu)
    except ValueError as e:
        raise ConfigError(f"--batch-size: {e} (split 'train' of {stem})") from None
    with sync_point("set-up: the band statistics move to the device once"):
        stats = device_stats(ds.stats, device) if on_gpu else None
    batches = DeviceBatches(source, device, stats=stats, inputs=ds.inputs, targets=ds.targets)
    steps_per_epoch = max(1, source.per_epoch() // cfg.accum)
    total = cfg.steps or int(cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_steps or int(cfg.warmup_epochs * steps_per_epoch)

    model = build_model(cfg)
    if cfg.init_from and not ck:  # a resumed run restores its own weights
        for line in init_encoder(model.encoder, cfg.init_from):
            if is_main:
                print(f"[train] --init-from: {line}", file=sys.stderr)
    with sync_point("set-up: the model moves to the device once"):
        model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model, cfg.weight_decay, capturable=graphs)
    if ck:
        with sync_point("set-up: the checkpoint's tensors move to the device once"):
            load_state(model, opt, ck, ck["path"])
        for g in opt.param_groups:  # a checkpoint of an eager run restores capturable=False
            g["capturable"] = graphs
        torch.set_rng_state(ck["rng_cpu"])
        if "rng_cuda" in ck and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng_cuda"])
        if is_main:
            dropped = trim_metrics(os.path.join(cfg.out, "metrics.jsonl"), step)  # no step logged twice
            print(f"[train] resumed {ck['path']} at step {step} (epoch {epoch}, batch {position})"
                  + (f"; dropped {dropped} metrics record(s) after it" if dropped else ""), file=sys.stderr)

    net = torch.compile(model) if cfg.compile else model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[torch.cuda.current_device()]
                                                        if on_gpu else None)
    precision = "bf16" if cfg.precision == "bf16" or (cfg.precision == "auto" and on_gpu) else "fp32"
    kept = num_kept(model.grid * model.grid, cfg.mask_ratio)
    stepper = TrainStep(model, opt, kept, net=net, accum=cfg.accum, clip_grad=cfg.clip_grad, precision=precision,
                        data_parallel=world > 1)
    stepper.set_step(step)
    run_step = GraphedTrainStep(stepper) if graphs else stepper

    flops, executed = count_flops(model, cfg, kept)
    peak = resolve_peak(device, precision, cfg.peak_tflops)
    images = cfg.batch_size * cfg.accum * world
    telemetry = Telemetry(device, images, images * kept, flops.total, executed.total, peak)
    stop_at = min(total, step + cfg.stop_after) if cfg.stop_after else total
    sinks = Sinks(cfg.out, is_main, total=total, initial=step, progress=cfg.progress)
    info = {"precision": precision, "peak": peak, "steps_per_epoch": steps_per_epoch, "graphs": graphs,
            "data": stem}
    run = Run(cfg, device, rank, world, model, opt, stepper, run_step, ds, batches, kept, cfg.lr or cfg.blr *
              images / 256, warmup, total, stop_at, step, epoch, position, flops, executed, peak, telemetry, sinks,
              info=info)
    if cfg.profile_steps and is_main:
        first, last = parse_steps(cfg.profile_steps)
        run.profiler = StepProfiler(os.path.join(cfg.out, "profile"), first, last, step, on_gpu, rank,
                                    memory=cfg.profile_memory,
                                    metadata={"backend": cfg.backend, "batch": cfg.batch_size, "precision": precision,
                                              "mask_ratio": cfg.mask_ratio, "model": cfg.model})
    if cfg.health_every and is_main:
        with sync_point("set-up: the health check's held batch"):
            run.held = held_batch(ds, batches, model, cfg.health_samples, cfg.seed)
    if is_main:
        print(f"[train] {cfg.model} {cfg.backend} on {device} ({precision}): {flops.total / 1e9:.1f} GFLOP per step "
              f"(model; {executed.total / 1e9:.1f} executed); MFU against {peak.tflops or 0:.3g} TFLOP/s: "
              f"{peak.source}", file=sys.stderr)
    return run
