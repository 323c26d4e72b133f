"""MMEarth MP-MAE pretraining: one flat loop, top to bottom.

    python -m train --preset demo                 # synthetic data, atto 56/8, a few hundred steps on CPU
    python -m train --preset mmearth64-atto --data /data/data_1M_v001_64/data_1M_v001_64
    python -m train --preset mmearth64-atto --data ... --cuda-graphs   # the whole step replayed as CUDA graphs
    torchrun --nproc_per_node 4 -m train --preset mmearth64-atto --data ...
    python -m train --preset demo --resume auto   # continue <out>/last.pt exactly
    python -m train --preset demo --profile-steps 5:8   # a trace and a time-by-category table of steps 5-8
    python -m train --preset demo --dry-run       # FLOPs, memory and data of the run, without running it

Set-up (``train.run.build_run``) turns the configuration into a run: model, data, optimiser, the step, telemetry,
sinks. Each optimiser step is exactly --accum micro-batches (``train.batches`` rolls over epochs itself) run by
``train.step.TrainStep``, the same step the end-to-end benchmark times. Between two logging points the loop never
waits for the device: masks are drawn on the host into pinned memory, batches are copied one ahead on a side
stream, the learning rate is a device tensor, step times are CUDA events, and losses and the non-finite flag are
read only at --log-every / --ckpt-every / --png-every points.

Writes to --out: last.pt (atomic: a kill never leaves a broken checkpoint), metrics.jsonl (one record per
--log-every steps: loss, per-task losses and weights, lr, img/s, visible patches/s, step ms, data wait, TFLOP/s,
MFU, peak memory, representation health; ``train/telemetry.py`` says what each means), recon/step_*.png, summary.json
(and a printed table) at the end, profile/ with --profile-steps, and TensorBoard events when tensorboard is installed.
"""

from __future__ import annotations

import math
import os
import sys
import time

import torch
import torch.distributed as dist

from mmearth_kernels.host_sync import sync_point

from .checkpoint import CheckpointError, save_checkpoint
from .config import ConfigError, TrainConfig, parse_config, validate
from .data.reader import DataError
from .files import WriteError
from .health import collapse_warning, health_metrics, pooled_features
from .phases import phase
from .run import Run, build_run
from .summary import run_summary, summary_table, write_summary
from .viz import save_reconstruction


class NonFiniteLoss(RuntimeError):
    pass


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up from 0, then half-cosine to 0 at ``total`` (per optimiser step)."""
    if step < warmup:
        return peak * step / max(1, warmup)
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * 0.5 * (1 + math.cos(math.pi * t))


def pretrain(cfg: TrainConfig) -> dict:
    run = build_run(validate(cfg))
    try:
        return train(run)
    finally:
        run.close()


def train(run: Run) -> dict:
    cfg, model, tel = run.cfg, run.model, run.telemetry
    step, epoch, position, t_start = run.step, run.epoch, run.position, time.perf_counter()
    history: list[float] = []
    pending: list[torch.Tensor] = []  # per-step [loss, task losses] on the device, read at the next sync point
    logs = 0
    model.train()
    while step < run.stop_at:
        with phase("data", run.device == "cuda"):
            micro_batches = []
            for micro in range(cfg.accum):  # exactly accum micro-batches, wherever an epoch ends
                (epoch, position), batch = next(run.batches)
                batch["mask"] = run.mask(step, micro)
                micro_batches.append(batch)
        position += 1  # the next micro-batch: where a resumed run starts
        lr = lr_at(step, run.peak_lr, run.warmup, run.total)
        run.stepper.set_lr(lr)
        pending.append(run.run_step(micro_batches))
        step += 1
        tel.step_done()
        run.sinks.step()
        if run.profiler is not None:
            run.profiler.step()
        log = step % cfg.log_every == 0 or step == run.stop_at
        picture = run.is_main and cfg.png_every and step % cfg.png_every == 0
        ckpt = run.is_main and (step % cfg.ckpt_every == 0 or step == run.stop_at)
        if not (log or picture or ckpt):
            continue
        with sync_point("logging"):  # the only places the loop waits for the device
            if run.device == "cuda":
                torch.cuda.synchronize()
            seen = torch.stack(pending).tolist()
            pending.clear()
            history += [s[0] for s in seen]
            check_finite(run, step, epoch, position)
            state = {"step": step, "epoch": epoch, "position": position, "world": run.world}
            if log and run.is_main:
                logs += 1
                rec = {"step": step, "loss": seen[-1][0], "lr": lr, "epoch": epoch,
                       "losses": {t: round(v, 5) for t, v in zip(model.tasks, seen[-1][1:])},
                       "weights": dict(zip(model.tasks, torch.exp(-model.log_vars.detach()).tolist())),
                       **tel.close_window(run.batches.wait_s), **health(run, logs)}
                run.sinks.log(rec)
            if picture:
                os.makedirs(os.path.join(cfg.out, "recon"), exist_ok=True)
                save_reconstruction(os.path.join(cfg.out, "recon", f"step_{step:06d}.png"), model,
                                    micro_batches[-1], micro_batches[-1]["mask"], run.kept)
            if ckpt:
                save_checkpoint(os.path.join(cfg.out, "last.pt"), model, run.opt, cfg, state)
            if log:
                tel.open_window(run.batches.wait_s)
    summary = run_summary(run, time.perf_counter() - t_start, step - run.step, history)
    if run.is_main:
        write_summary(os.path.join(cfg.out, "summary.json"), summary)
        run.sinks.close()
        print(f"[train] run summary ({cfg.out}/summary.json):\n{summary_table(summary)}", file=sys.stderr)
    return {"losses": history, "step": step, "summary": summary}


def check_finite(run: Run, step: int, epoch: int, position: int) -> None:
    """Every rank reads the same all-reduced flag, so all stop together, with a diagnostic checkpoint."""
    bad = run.stepper.nonfinite()
    if bad is None:
        return
    first, bad_tasks = bad
    diag = os.path.join(run.cfg.out, f"nonfinite-step{first}.pt")
    if run.is_main:
        save_checkpoint(diag, run.model, run.opt, run.cfg, {"step": first, "epoch": epoch, "position": position,
                                                            "world": run.world, "stopped_at_step": step})
    tasks = ", ".join(bad_tasks) or "the weighting"
    raise NonFiniteLoss(f"non-finite loss at step {first} (task(s): {tasks}); diagnostic checkpoint: {diag} (the "
                        f"weights from before that step: it and the {step - first - 1} step(s) after it were not "
                        f"applied)")


def health(run: Run, logs: int) -> dict:
    """Representation health on the held batch every --health-every logging points (the first one included)."""
    if run.held is None or (logs - 1) % run.cfg.health_every:
        return {}
    h = run.held
    with run.stepper.autocast:
        z = pooled_features(run.model.encoder, h["input"], h["mask"], run.kept, run.cfg.batch_size)
    out = health_metrics(z)
    warning = collapse_warning(out)
    if warning:
        run.sinks.say(f"[train] warning: {warning}")
    return out


def main(argv=None) -> None:
    try:
        cfg = parse_config(argv)
        if cfg.dry_run:
            from .dry_run import dry_run

            return dry_run(cfg)
        result = pretrain(cfg)
    except NonFiniteLoss as e:
        sys.exit(f"[train] stopped: {e}")
    except (ConfigError, CheckpointError, DataError, WriteError) as e:  # the user's to fix: no traceback
        print(f"[train] error: {e}", file=sys.stderr)
        sys.exit(2)
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
