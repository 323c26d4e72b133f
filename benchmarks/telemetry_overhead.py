"""``python -m benchmarks.telemetry_overhead``: what the trainer's telemetry costs the demo step (target < 2 %).

Times the demo preset's training step (``train.step.TrainStep`` on a synthetic batch: the median of ``--repeats``
steps), then, in the same process, each piece of work the telemetry adds to the loop, timed on its own over many
calls:

* per step: the step mark (``Telemetry.step_done``: a host clock on CPU, a CUDA event on GPU) and the four phase
  ranges (``train/phases.py``: data, forward, backward, optimiser);
* per logging point, divided by ``--log-every``: closing and opening the window (step times, FLOP/s, memory);
* per health check, divided by ``--log-every`` x ``--health-every``: the encoder on the held batch and the metrics.

Overhead = the telemetry's time per step / the step's time. Timing the pieces separately, instead of two whole runs
with and without telemetry, measures a 1 % effect that run-to-run noise (several % on a shared VM) would bury.
Writes ``benchmarks/results/telemetry-overhead-<device>-<date>.json`` (a record; ``--out`` names another file) and
exits 1 when the overhead is 2 % or more.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from mmearth_kernels.masking import num_kept
from mmearth_kernels.testing import training_batch
from train.config import TrainConfig, parse_config
from train.hardware import Peak
from train.health import health_metrics, pooled_features
from train.phases import phase
from train.run import build_model
from train.step import TrainStep, make_optimizer
from train.telemetry import Telemetry

from .records import cpu_label, new_record, write_result

LIMIT_PCT = 2.0


def _per_call(fn, calls: int) -> float:
    """Median seconds per call of ``fn`` over 5 rounds of ``calls`` calls."""
    rounds = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - t) / calls)
    return statistics.median(rounds)


def measure(cfg: TrainConfig, device: str, repeats: int) -> dict:
    model = build_model(cfg).to(device)
    kept = num_kept(model.grid ** 2, cfg.mask_ratio)
    step = TrainStep(model, make_optimizer(model, cfg.weight_decay), kept, accum=cfg.accum)
    step.set_lr(1e-4)
    mb = training_batch(cfg.batch_size, cfg.crop, model.tasks, device)
    mb["mask"] = model.random_mask(cfg.batch_size, generator=torch.Generator().manual_seed(0))[0].to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    step([mb])
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step([mb])
        sync()
        times.append(time.perf_counter() - t)
    step_s = statistics.median(times)

    tel = Telemetry(device, cfg.batch_size, cfg.batch_size * kept, 1e9, 1e9, Peak(1.0, "benchmark"))
    mark_s = _per_call(tel.step_done, 2000)

    def ranges():
        for name in ("data", "forward", "backward", "optimiser"):
            with phase(name, device == "cuda"):
                pass

    phases_s = _per_call(ranges, 2000)

    def window():
        for _ in range(cfg.log_every):
            tel.step_done()
        sync()
        tel.close_window(0.0)

    window_s = _per_call(window, 20) - cfg.log_every * mark_s
    held = {"input": torch.randn(cfg.health_samples, 12, cfg.crop, cfg.crop, device=device),
            "mask": model.random_mask(cfg.health_samples)[0].to(device)}

    def health():
        z = pooled_features(model.encoder, held["input"], held["mask"], kept, cfg.batch_size)
        health_metrics(z)
        sync()

    health_s = _per_call(health, 1)
    per_step = {"step_mark": mark_s, "phase_ranges": phases_s, "window": window_s / cfg.log_every,
                "health": health_s / (cfg.log_every * cfg.health_every) if cfg.health_every else 0.0}
    total = sum(per_step.values())
    return {"step_ms": 1e3 * step_s, "telemetry_us_per_step": 1e6 * total, "overhead_pct": 100 * total / step_s,
            **{f"{k}_us_per_step": 1e6 * v for k, v in per_step.items()}, "log_every": cfg.log_every,
            "health_every": cfg.health_every, "health_samples": cfg.health_samples, "batch": cfg.batch_size,
            "limit_pct": LIMIT_PCT}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.telemetry_overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--repeats", type=int, default=7, help="timed demo steps (the median is used)")
    ap.add_argument("--out", default=None,
                    help="the record (default: benchmarks/results/telemetry-overhead-<device>-<date>.json)")
    ap.add_argument("--smoke", action="store_true", help="CI: a tiny model, no record (numbers meaningless)")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        print("telemetry_overhead: --repeats must be a positive int", file=sys.stderr)
        return 2
    extra = ["--crop", "16", "--decoder-dim", "32", "--batch-size", "2", "--health-samples", "4"] if args.smoke else []
    cfg = parse_config(["--preset", "demo", *extra])
    row = measure(cfg, args.device, 1 if args.smoke else args.repeats)
    print(f"demo step {row['step_ms']:.1f} ms; telemetry {row['telemetry_us_per_step']:.1f} us per step = "
          f"{row['overhead_pct']:.3f} % (limit {LIMIT_PCT} %): mark {row['step_mark_us_per_step']:.2f} us, phases "
          f"{row['phase_ranges_us_per_step']:.2f} us, window {row['window_us_per_step']:.2f} us, health "
          f"{row['health_us_per_step']:.1f} us per step")
    if not args.smoke:
        from train.summary import cpu_model

        name = torch.cuda.get_device_name() if args.device == "cuda" else cpu_label(cpu_model(), os.cpu_count())
        cmd = "python -m benchmarks.telemetry_overhead " + " ".join(argv if argv is not None else sys.argv[1:])
        path = write_result(new_record("telemetry_overhead", name, cmd.strip(), [row],
                                       versions={"cpu_isa": torch.backends.cpu.get_cpu_capability()}),
                            "telemetry-overhead", args.out)
        print(f"record: {path}")
    return 0 if row["overhead_pct"] < LIMIT_PCT else 1


if __name__ == "__main__":
    sys.exit(main())
