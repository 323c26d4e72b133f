"""MMEarth MP-MAE pretraining: one flat loop, top to bottom.

    python -m train --preset demo                 # synthetic data, atto 56/8, a few hundred steps on CPU
    python -m train --preset mmearth64-atto --data /data/data_1M_v001_64/data_1M_v001_64
    python -m train --preset mmearth64-atto --data ... --cuda-graphs   # the whole step replayed as CUDA graphs
    torchrun --nproc_per_node 4 -m train --preset mmearth64-atto --data ...
    python -m train --preset demo --resume auto   # continue <out>/last.pt exactly

Each optimiser step is exactly --accum micro-batches (``train.batches`` rolls over epochs itself) run by
``train.step.TrainStep``, the same step the end-to-end benchmark times. Between two logging points the
loop never waits for the device: masks are drawn on the host into pinned memory, batches are copied one
ahead on a side stream, the learning rate is a device tensor, and losses and the non-finite flag are
read only at --log-every / --ckpt-every / --png-every points.

Writes to --out: last.pt (atomic: a kill never leaves a broken checkpoint), metrics.jsonl (one record
per --log-every steps: loss, per-task losses and uncertainty weights, lr, img/s, data-wait and compute
time, peak GPU memory), recon/step_*.png (masked input, prediction, target for S2 RGB and each pixel
task), and TensorBoard events when tensorboard is installed.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mmearth_kernels.host_sync import host_only, sync_point
from mmearth_kernels.masking import num_kept
from mmearth_kernels.models import MPMAE
from mmearth_kernels.tasks import resolve_tasks

from .batches import DeviceBatches, MicroBatches, default_workers
from .checkpoint import (CheckpointError, check_resumable, init_encoder, load_checkpoint, load_state, save_checkpoint,
                         trim_metrics)
from .config import ConfigError, TrainConfig, parse_config, validate
from .files import WriteError, remove_stale_temps
from .data import MMEarthDataset
from .data.reader import DataError, device_stats
from .step import GraphedTrainStep, TrainStep, make_optimizer
from .viz import save_reconstruction


class NonFiniteLoss(RuntimeError):
    pass


# -- set-up -------------------------------------------------------------------------------------
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
    stem = cfg.data
    if not stem:
        root = os.path.expanduser(cfg.data_dir)
        stem = os.path.join(root, "synthetic_2000_64")
        if rank == 0 and not os.path.exists(stem + ".h5"):
            from .data.synthetic import write_dataset

            print(f"[train] making synthetic MMEarth64-format data in {root} (first use only)", file=sys.stderr)
            # gzip level 1: the same arrays as the default level 4 in 3/4 of the time (the noisy synthetic
            # bands barely compress either way), and the demo reads them through the cache anyway
            try:  # an interrupted earlier write of ours is replaced; files of anyone else are not
                write_dataset(root, tiles=2000, size=64, seed=0, stem="synthetic_2000_64", compression_level=1)
            except FileExistsError as e:
                raise DataError(f"--data-dir {root}: {e}; these files were not made by an interrupted demo "
                                f"run, so they are left alone: remove them or pick another --data-dir") from None
    cache = None
    if cfg.cache:
        cache = stem + "_cache"
        if rank == 0 and os.path.isfile(stem + ".h5"):
            from .data.cache import build_cache, open_cache
            from .data.reader import ALL_TASKS

            why = None
            if not os.path.exists(cache):
                why = "first use"
            else:
                try:
                    open_cache(cache, stem + ".h5", ALL_TASKS)
                except DataError as e:  # incomplete, damaged or stale: rebuilt if it is ours (build_cache checks)
                    why = str(e)
            if why is not None:
                if why != "first use":
                    print(f"[train] rebuilding the cache: {why}", file=sys.stderr)
                try:
                    build_cache(stem, cache, overwrite=os.path.exists(cache))
                except FileExistsError as e:
                    raise DataError(f"--cache: {e}") from None
    if dist.is_initialized():
        dist.barrier()
    return stem, cache


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up from 0, then half-cosine to 0 at ``total`` (per optimiser step)."""
    if step < warmup:
        return peak * step / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * 0.5 * (1 + math.cos(math.pi * t))


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


# -- the loop -----------------------------------------------------------------------------------
def pretrain(cfg: TrainConfig) -> dict:
    validate(cfg)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to torch")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    rank, world = setup_distributed(device)
    torch.manual_seed(cfg.seed + rank)
    is_main = rank == 0
    graphs = cfg.cuda_graphs and device == "cuda"
    if cfg.cuda_graphs and not graphs and is_main:
        print(f"[train] --cuda-graphs skipped: CUDA graphs need a CUDA device (running on {device}); "
              "the step runs eagerly", file=sys.stderr)
    if graphs and world > 1:
        raise ValueError("--cuda-graphs with several processes (torchrun) is not supported yet; drop one of them")
    os.makedirs(cfg.out, exist_ok=True)
    for name in ("last.pt", "metrics.jsonl"):  # what a killed run may have left half-written
        remove_stale_temps(os.path.join(cfg.out, name))
    stem, cache = prepare_data(cfg, rank)
    on_gpu = device == "cuda"
    # on a GPU the loader returns stored values and the batch is normalised on the device after the copy
    ds = MMEarthDataset(stem, split="train", crop=cfg.crop, seed=cfg.seed, cache=cache, normalize=not on_gpu)
    tasks = resolve_tasks(cfg.tasks)
    with host_only("the model is built and initialised on the host, then moved"):
        model = MPMAE(cfg.model, img_size=cfg.crop, patch_size=cfg.patch_size, tasks=tasks, decoder=cfg.decoder,
                      decoder_dim=cfg.decoder_dim, mask_ratio=cfg.mask_ratio, loss_weighting=cfg.loss_weighting,
                      backend=cfg.backend, grn_stats=cfg.grn_stats, impl=cfg.impl, init=cfg.init, stem=cfg.stem)
        if cfg.init_from and not cfg.resume:  # a resumed run restores its own weights
            for line in init_encoder(model.encoder, cfg.init_from):
                if is_main:
                    print(f"[train] --init-from: {line}", file=sys.stderr)
    with sync_point("set-up: the model moves to the device once"):
        model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    eff_batch = cfg.batch_size * cfg.accum * world
    peak_lr = cfg.lr or cfg.blr * eff_batch / 256
    try:
        source = MicroBatches(ds, cfg.batch_size, seed=cfg.seed, rank=rank, world=world,
                              workers=default_workers(device, world) if cfg.workers < 0 else cfg.workers,
                              pin_memory=on_gpu)
    except ValueError as e:
        raise ConfigError(f"--batch-size: {e} (split 'train' of {stem})") from None
    steps_per_epoch = max(1, source.per_epoch() // cfg.accum)
    total = cfg.steps or int(cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_steps or int(cfg.warmup_epochs * steps_per_epoch)
    opt = make_optimizer(model, cfg.weight_decay, capturable=graphs)
    step, epoch, position = 0, 0, 0
    if cfg.resume:
        path = os.path.join(cfg.out, "last.pt") if cfg.resume == "auto" else cfg.resume
        if not os.path.isfile(path):
            raise CheckpointError(f"--resume: no checkpoint at {path}")
        ck = load_checkpoint(path)
        check_resumable(ck, cfg, world, path)
        with sync_point("set-up: the checkpoint's tensors move to the device once"):
            load_state(model, opt, ck, path)
        for g in opt.param_groups:  # a checkpoint of an eager run restores capturable=False
            g["capturable"] = graphs
        step, epoch, position = ck["step"], ck["epoch"], ck["position"]
        torch.set_rng_state(ck["rng_cpu"])
        if "rng_cuda" in ck and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng_cuda"])
        if is_main:
            dropped = trim_metrics(os.path.join(cfg.out, "metrics.jsonl"), step)  # no step logged twice
            print(f"[train] resumed {path} at step {step} (epoch {epoch}, batch {position})"
                  + (f"; dropped {dropped} metrics record(s) after it" if dropped else ""), file=sys.stderr)
    source.start = (epoch, position)
    net = torch.compile(model) if cfg.compile else model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[torch.cuda.current_device()]
                                                        if device == "cuda" else None)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device == "cuda")
    kept = num_kept(model.grid * model.grid, cfg.mask_ratio)
    stepper = TrainStep(model, opt, kept, net=net, accum=cfg.accum, clip_grad=cfg.clip_grad,
                        precision="bf16" if use_bf16 else "fp32", data_parallel=world > 1)
    stepper.set_step(step)
    run_step = GraphedTrainStep(stepper) if graphs else stepper
    with sync_point("set-up: the band statistics move to the device once"):
        stats = device_stats(ds.stats, device) if on_gpu else None
    batches = DeviceBatches(source, device, stats=stats, inputs=ds.inputs, targets=ds.targets)
    metrics = open(os.path.join(cfg.out, "metrics.jsonl"), "a") if is_main else None
    tb = None
    if is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(os.path.join(cfg.out, "tb"))
        except ImportError:
            pass
    bar = tqdm(total=total, initial=step, disable=not (is_main and cfg.progress), unit="step", dynamic_ncols=True)
    history: list[float] = []
    pending: list[torch.Tensor] = []  # per-step [loss, task losses] on the device, read at the next sync point
    window = {"t0": time.perf_counter(), "wait0": 0.0, "samples": 0}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    stop_at = min(total, step + cfg.stop_after) if cfg.stop_after else total
    while step < stop_at:
        micro_batches = []
        for micro in range(cfg.accum):  # exactly accum micro-batches, wherever an epoch ends
            (epoch, position), batch = next(batches)
            batch["mask"] = step_mask(model, cfg, step, micro, rank, world, device)
            micro_batches.append(batch)
        position += 1  # the next micro-batch: where a resumed run starts
        lr = lr_at(step, peak_lr, warmup, total)
        stepper.set_lr(lr)
        pending.append(run_step(micro_batches))
        step += 1
        window["samples"] += cfg.batch_size * cfg.accum * world
        bar.update(1)
        log = step % cfg.log_every == 0 or step == stop_at
        picture = is_main and cfg.png_every and step % cfg.png_every == 0
        ckpt = is_main and (step % cfg.ckpt_every == 0 or step == stop_at)
        if not (log or picture or ckpt):
            continue
        with sync_point("logging"):  # the only places the loop waits for the device
            if device == "cuda":
                torch.cuda.synchronize()
            seen = torch.stack(pending).tolist()
            pending.clear()
            history += [s[0] for s in seen]
            bad = stepper.nonfinite()  # every rank reads the same all-reduced flag: all stop together
            if bad is not None:
                first, bad_tasks = bad
                diag = os.path.join(cfg.out, f"nonfinite-step{first}.pt")
                if is_main:
                    save_checkpoint(diag, model, opt, cfg, {"step": first, "epoch": epoch, "position": position,
                                                            "world": world, "stopped_at_step": step})
                tasks = ", ".join(bad_tasks) or "the weighting"
                raise NonFiniteLoss(f"non-finite loss at step {first} (task(s): {tasks}); diagnostic checkpoint: "
                                    f"{diag} (the weights from before that step: it and the {step - first - 1} "
                                    f"step(s) after it were not applied)")
            if log and is_main:
                busy = time.perf_counter() - window["t0"]
                data_s = batches.wait_s - window["wait0"]
                last = seen[-1]
                rec = {"step": step, "loss": last[0], "lr": lr,
                       "losses": {t: round(v, 5) for t, v in zip(model.tasks, last[1:])},
                       "weights": dict(zip(model.tasks, torch.exp(-model.log_vars.detach()).tolist())),
                       "img_per_s": window["samples"] / max(busy, 1e-9), "data_s": data_s,
                       "compute_s": busy - data_s, "epoch": epoch}
                if device == "cuda":
                    rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                if tb is not None:
                    tb.add_scalar("loss", rec["loss"], step)
                    for t, v in rec["losses"].items():
                        tb.add_scalar(f"loss/{t}", v, step)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", img_s=f"{rec['img_per_s']:.0f}")
            if picture:
                os.makedirs(os.path.join(cfg.out, "recon"), exist_ok=True)
                save_reconstruction(os.path.join(cfg.out, "recon", f"step_{step:06d}.png"), model,
                                    micro_batches[-1], micro_batches[-1]["mask"], kept)
            if ckpt:
                save_checkpoint(os.path.join(cfg.out, "last.pt"), model, opt, cfg,
                                {"step": step, "epoch": epoch, "position": position, "world": world})
            if log:
                window = {"t0": time.perf_counter(), "wait0": batches.wait_s, "samples": 0}
    bar.close()
    if metrics:
        metrics.close()
    if tb is not None:
        tb.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    return {"losses": history, "step": step}


def main(argv=None) -> None:
    try:
        cfg = parse_config(argv)
        result = pretrain(cfg)
    except NonFiniteLoss as e:
        sys.exit(f"[train] stopped: {e}")
    except (ConfigError, CheckpointError, DataError, WriteError) as e:  # the user's to fix: no traceback
        sys.exit(f"[train] error: {e}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    h = result["losses"]
    if h:
        k = max(1, len(h) // 10)
        print(f"[train] done: {result['step']} steps; loss {sum(h[:k]) / k:.3f} (first {k}) -> "
              f"{sum(h[-k:]) / k:.3f} (last {k}); outputs in {cfg.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
