"""MMEarth MP-MAE pretraining: one flat loop, top to bottom.

    python -m train --preset demo                 # synthetic data, atto 56/8, a few hundred steps on CPU
    python -m train --preset mmearth64-atto --data /data/data_1M_v001_64/data_1M_v001_64
    torchrun --nproc_per_node 4 -m train --preset mmearth64-atto --data ...
    python -m train --preset demo --resume auto   # continue <out>/last.pt exactly

Writes to --out: last.pt (atomic: a kill never leaves a broken checkpoint), metrics.jsonl (one record
per --log-every steps: loss, per-task losses and uncertainty weights, lr, img/s, data-wait and compute
time, peak GPU memory), recon/step_*.png (masked input, prediction, target for S2 RGB and each pixel
task), and TensorBoard events when tensorboard is installed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
from tqdm import tqdm

from mmearth_kernels.masking import num_kept
from mmearth_kernels.models import MPMAE
from mmearth_kernels.models.mpmae import TASK_SETS

from .config import TrainConfig, parse_config
from .data import MMEarthDataset


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
            write_dataset(root, tiles=2000, size=64, seed=0, stem="synthetic_2000_64", compression_level=1)
    cache = None
    if cfg.cache:
        cache = stem + "_cache"
        if rank == 0 and not os.path.exists(os.path.join(cache, "manifest.json")):
            from .data.cache import build_cache

            build_cache(stem, cache, overwrite=os.path.exists(cache))
    if dist.is_initialized():
        dist.barrier()
    return stem, cache


def param_groups(model: torch.nn.Module, weight_decay: float):
    """No weight decay on biases, norms, GRN and the uncertainty weights (every tensor of dim <= 1, plus
    GRN's [1, 1, 1, C] parameters); the rest decays."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() <= 1 or ".grn." in name or name.endswith("log_vars"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up from 0, then half-cosine to 0 at ``total`` (per optimiser step)."""
    if step < warmup:
        return peak * step / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * 0.5 * (1 + math.cos(math.pi * t))


def epoch_batches(n: int, batch: int, epoch: int, seed: int, rank: int, world: int) -> list[list[int]]:
    """This rank's batches of one epoch: a permutation seeded by (seed, epoch), split across ranks,
    drop_last, so any (epoch, position) can be regenerated exactly on resume."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    per_step = batch * world
    steps = n // per_step
    return [order[s * per_step + rank * batch: s * per_step + (rank + 1) * batch] for s in range(steps)]


def step_mask(model: MPMAE, cfg: TrainConfig, step: int, micro: int, rank: int, world: int) -> torch.Tensor:
    """This rank's slice of the global batch's random mask, drawn from a generator seeded by (seed, step,
    micro-batch): independent of the process count (a 2-process run masks exactly like a 1-process run
    at the same global batch) and of the RNG state (a resumed run masks exactly like an uninterrupted one)."""
    import numpy as np

    g = torch.Generator().manual_seed(int(np.random.SeedSequence((cfg.seed, step, micro)).generate_state(1)[0]))
    mask, _ = model.random_mask(cfg.batch_size * world, generator=g)
    return mask[rank * cfg.batch_size:(rank + 1) * cfg.batch_size]


def sync_counts(counts: torch.Tensor):
    """Per-task element counts summed over processes (one small all-reduce per micro-batch): see
    ``MPMAE.forward``; this is what makes a data-parallel step equal the one-process step."""
    counts = counts.clone()
    dist.all_reduce(counts)
    return counts, dist.get_world_size()


def global_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over processes (identity on one)."""
    if not dist.is_initialized():
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def collate(items):
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


# -- checkpoints --------------------------------------------------------------------------------
def save_checkpoint(path: str, model, opt, cfg: TrainConfig, state: dict) -> None:
    """Atomic: write a temporary file in the same directory, then rename over the old one."""
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "config": dataclasses.asdict(cfg),
            "rng_cpu": torch.get_rng_state(), **state}
    if torch.cuda.is_available():
        ckpt["rng_cuda"] = torch.cuda.get_rng_state_all()
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str):
    return torch.load(path, map_location="cpu", weights_only=True)


# -- pictures -----------------------------------------------------------------------------------
def save_reconstruction(path: str, model: MPMAE, batch: dict, mask: torch.Tensor, kept) -> None:
    """One figure for the first sample: rows = S2 RGB and each pixel task; columns = masked input (grey =
    hidden), reconstruction (the prediction at masked patches, the visible input elsewhere, as MAE papers
    show it; the loss only ever sees the masked ones), target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    model.eval()
    rec = model.reconstruct(batch["input"][:1], mask[:1], kept)
    model.train()
    p = model.patch_size
    hidden = mask[0].repeat_interleave(p, 0).repeat_interleave(p, 1).cpu().numpy()
    fig, axes = plt.subplots(len(rec), 3, figsize=(7.5, 2.4 * len(rec)), squeeze=False)
    for r, task in enumerate(rec):
        tgt = batch[task][0].detach().float().cpu()
        pred = rec[task][0].detach().float().cpu()
        if task in ("dynamic_world", "esa_worldcover"):
            t_img, p_img = tgt.numpy(), pred.numpy()
            kw = dict(cmap=plt.get_cmap("tab20").with_extremes(bad="0.6"), vmin=-1, vmax=11, interpolation="nearest")
        else:
            if task == "sentinel2":
                tgt, pred = tgt[[3, 2, 1]], pred[[3, 2, 1]]  # B4, B3, B2 = RGB
                # norm_pix: the prediction is per-patch standardised; show it with the target's patch stats
                tp = tgt.nan_to_num().unfold(1, p, p).unfold(2, p, p)
                mean, std = tp.mean(dim=(0, 3, 4), keepdim=True), tp.std(dim=(0, 3, 4), keepdim=True)
                pred = (pred.unfold(1, p, p).unfold(2, p, p) * std + mean).permute(0, 1, 3, 2, 4).reshape(tgt.shape)
            else:
                tgt, pred = tgt[:1], pred[:1]
            finite = tgt[torch.isfinite(tgt)]
            lo, hi = (torch.quantile(finite, 0.02), torch.quantile(finite, 0.98)) if finite.numel() else (0.0, 1.0)
            scale = lambda a: ((a.nan_to_num(float(lo)) - lo) / (hi - lo + 1e-6)).clamp(0, 1)  # noqa: E731
            t_img, p_img = scale(tgt), scale(pred)
            t_img = t_img.permute(1, 2, 0).numpy() if t_img.shape[0] == 3 else t_img[0].numpy()
            p_img = p_img.permute(1, 2, 0).numpy() if p_img.shape[0] == 3 else p_img[0].numpy()
            kw = dict(cmap=plt.get_cmap("viridis").with_extremes(bad="0.6"))
        recon = np.where(hidden[..., None] if t_img.ndim == 3 else hidden, p_img, t_img)
        if t_img.ndim == 3:
            masked = np.where(hidden[..., None], 0.6, t_img)
        else:
            masked = np.ma.masked_array(t_img, mask=hidden)
        for c, (img, title) in enumerate(((masked, "masked input"), (recon, "reconstruction"), (t_img, "target"))):
            axes[r, c].imshow(img, **kw)
            axes[r, c].set_title(f"{task}: {title}", fontsize=7)
            axes[r, c].axis("off")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


# -- the loop -----------------------------------------------------------------------------------
def train(cfg: TrainConfig) -> dict:
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    rank, world = setup_distributed(device)
    torch.manual_seed(cfg.seed + rank)
    main = rank == 0
    os.makedirs(cfg.out, exist_ok=True)
    stem, cache = prepare_data(cfg, rank)
    ds = MMEarthDataset(stem, split="train", crop=cfg.crop, seed=cfg.seed, cache=cache)
    tasks = cfg.tasks if cfg.tasks in TASK_SETS else tuple(cfg.tasks.split(","))
    model = MPMAE(cfg.model, img_size=cfg.crop, patch_size=cfg.patch_size, tasks=tasks, decoder=cfg.decoder,
                  decoder_dim=cfg.decoder_dim, mask_ratio=cfg.mask_ratio, loss_weighting=cfg.loss_weighting,
                  backend=cfg.backend, grn_stats=cfg.grn_stats, impl=cfg.impl, init=cfg.init).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    eff_batch = cfg.batch_size * cfg.accum * world
    peak_lr = cfg.lr or cfg.blr * eff_batch / 256
    steps_per_epoch = max(1, len(ds) // (cfg.batch_size * world) // cfg.accum)
    total = cfg.steps or int(cfg.epochs * steps_per_epoch)
    warmup = cfg.warmup_steps or int(cfg.warmup_epochs * steps_per_epoch)
    # fused: one kernel for all ~180 parameter tensors instead of a dozen foreach launches (small models
    # at small batch are launch-bound on a GPU; on CPU it is 3-4x faster than foreach, ~5% of a demo step)
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=peak_lr, betas=(0.9, 0.95), fused=True)
    step, epoch, position = 0, 0, 0
    if cfg.resume:
        path = os.path.join(cfg.out, "last.pt") if cfg.resume == "auto" else cfg.resume
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--resume: no checkpoint at {path}")
        ck = load_checkpoint(path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        step, epoch, position = ck["step"], ck["epoch"], ck["position"]
        torch.set_rng_state(ck["rng_cpu"])
        if "rng_cuda" in ck and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng_cuda"])
        if main:
            print(f"[train] resumed {path} at step {step} (epoch {epoch}, batch {position})", file=sys.stderr)
    net = torch.compile(model) if cfg.compile else model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[torch.cuda.current_device()]
                                                        if device == "cuda" else None)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device == "cuda")
    autocast = torch.autocast(device, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    kept = num_kept(model.grid * model.grid, cfg.mask_ratio)
    ds.set_epoch(epoch)
    metrics = open(os.path.join(cfg.out, "metrics.jsonl"), "a") if main else None
    tb = None
    if main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(os.path.join(cfg.out, "tb"))
        except ImportError:
            pass
    bar = tqdm(total=total, initial=step, disable=not (main and cfg.progress), unit="step", dynamic_ncols=True)
    history, window = [], {"data": 0.0, "compute": 0.0, "samples": 0}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.train()
    stop_at = min(total, step + cfg.stop_after) if cfg.stop_after else total
    while step < stop_at:
        batches = epoch_batches(len(ds), cfg.batch_size, epoch, cfg.seed, rank, world)
        todo = batches[position:]
        loader = torch.utils.data.DataLoader(ds, batch_sampler=todo, num_workers=cfg.workers, collate_fn=collate) \
            if cfg.workers else (collate(ds.__getitems__(b)) for b in todo)
        micro = 0
        t_data = time.perf_counter()
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            t0 = time.perf_counter()
            window["data"] += t0 - t_data
            lr = lr_at(step, peak_lr, warmup, total)
            for group in opt.param_groups:
                group["lr"] = lr
            mask = step_mask(model, cfg, step, micro % cfg.accum, rank, world).to(device)
            inp = batch["input"].contiguous(memory_format=torch.channels_last) if cfg.channels_last else batch["input"]
            with autocast:
                out = net(inp, batch, mask, kept, sync_counts if world > 1 else None)
            loss = out["loss"]
            # the global loss and per-task losses (every rank gets them, so every rank stops together)
            seen = global_mean(torch.cat([loss.detach().float()[None], torch.stack(list(out["losses"].values()))]))
            if not torch.isfinite(seen).all():
                bad = [t for t, v in zip(out["losses"], seen[1:].tolist()) if not math.isfinite(v)]
                diag = os.path.join(cfg.out, f"nonfinite-step{step}.pt")
                if main:
                    save_checkpoint(diag, model, opt, cfg, {"step": step, "epoch": epoch, "position": position})
                raise NonFiniteLoss(f"non-finite loss at step {step} (task(s): {', '.join(bad) or 'the weighting'}); "
                                    f"diagnostic checkpoint: {diag}")
            last_micro = (micro + 1) % cfg.accum == 0
            with net.no_sync() if world > 1 and not last_micro else contextlib.nullcontext():  # all-reduce once
                (loss / cfg.accum).backward()
            micro += 1
            position += 1
            window["samples"] += batch["input"].shape[0] * world
            if micro % cfg.accum:
                t_data = time.perf_counter()
                continue
            if cfg.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            window["compute"] += time.perf_counter() - t0
            step += 1
            rec = {"step": step, "loss": seen[0].item(), "lr": lr}
            history.append(rec["loss"])
            bar.update(1)
            if main and (step % cfg.log_every == 0 or step == total):
                busy = window["data"] + window["compute"]
                rec.update(losses={t: round(v, 5) for t, v in zip(out["losses"], seen[1:].tolist())},
                           weights=dict(zip(model.tasks, torch.exp(-model.log_vars.detach()).tolist())),
                           img_per_s=window["samples"] / max(busy, 1e-9), data_s=window["data"],
                           compute_s=window["compute"], epoch=epoch)
                if device == "cuda":
                    rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                if tb is not None:
                    tb.add_scalar("loss", rec["loss"], step)
                    for t, v in rec["losses"].items():
                        tb.add_scalar(f"loss/{t}", v, step)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", img_s=f"{rec['img_per_s']:.0f}")
                window = {"data": 0.0, "compute": 0.0, "samples": 0}
            if main and cfg.png_every and step % cfg.png_every == 0:
                os.makedirs(os.path.join(cfg.out, "recon"), exist_ok=True)
                save_reconstruction(os.path.join(cfg.out, "recon", f"step_{step:06d}.png"), model, batch, mask, kept)
            if main and (step % cfg.ckpt_every == 0 or step == stop_at):
                save_checkpoint(os.path.join(cfg.out, "last.pt"), model, opt, cfg,
                                {"step": step, "epoch": epoch, "position": position})
            if step >= stop_at:
                break
            t_data = time.perf_counter()
        else:
            epoch, position = epoch + 1, 0
            ds.set_epoch(epoch)
    bar.close()
    if metrics:
        metrics.close()
    if dist.is_initialized():
        dist.destroy_process_group()
    return {"losses": history, "step": step}


def main(argv=None) -> None:
    cfg = parse_config(argv)
    try:
        result = train(cfg)
    except NonFiniteLoss as e:
        sys.exit(f"[train] stopped: {e}")
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
