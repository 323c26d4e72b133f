"""The run summary: ``OUT/summary.json`` and a printed table at the end of a run (this invocation: a resumed
run summarises the steps it ran), the input of ``python -m train.report``."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys

import numpy as np
import torch

import mmearth_kernels
from mmearth_kernels.ops.registry import OPS

from .files import write_atomically


def _median(windows: list[dict], key: str):
    vals = [w[key] for w in windows if w.get(key) is not None]
    return float(np.median(vals)) if vals else None


def commit() -> dict:
    """The git commit of the code that ran (and whether the tree had changes), when it runs from a checkout."""
    here = mmearth_kernels.__path__[0]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"sha": None, "dirty": None}
    return {"sha": sha or None, "dirty": bool(dirty) if sha else None}


def versions() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton_version, "mmearth_kernels": mmearth_kernels.__version__,
            "extension": mmearth_kernels.EXTENSION_LOADED}


def cpu_model() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_model()} ({torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()})"


def command() -> str | None:
    """The command line that started this run, when the trainer's own entry point did (not a library call)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if argv0.endswith(os.path.join("train", "__main__.py")) or os.path.basename(argv0) == "mmearth-pretrain":
        return "python -m train " + shlex.join(sys.argv[1:])
    return None


def run_summary(run, wall_s: float, steps_run: int, losses: list[float]) -> dict:
    cfg, w = run.cfg, run.telemetry.windows
    dev = torch.device(run.device)
    wall = sum(x["wall_s"] for x in w) or 1e-9
    k = max(1, len(losses) // 10)
    mem = [x["peak_mem_gib"] for x in w if x.get("peak_mem_gib") is not None]
    return {
        "out": cfg.out, "wall_s": wall_s, "steps": steps_run, "last_step": run.step + steps_run,
        "img_per_s": _median(w, "img_per_s"), "patches_per_s": _median(w, "patches_per_s"),
        "step_ms": _median(w, "step_ms"), "data_wait_pct": 100 * sum(x["data_s"] for x in w) / wall,
        "tflops": _median(w, "tflops"), "tflops_executed": _median(w, "tflops_executed"),
        "mfu_pct": _median(w, "mfu_pct"), "peak_mem_gib": max(mem) if mem else None,
        "loss_first": float(np.mean(losses[:k])) if losses else None,
        "loss_last": float(np.mean(losses[-k:])) if losses else None,
        "model": cfg.model, "backend": cfg.backend, "impl": cfg.impl,
        "impls": {name: spec.resolve(cfg.impl, dev).label for name, spec in OPS.items()},
        "precision": run.info["precision"], "batch": cfg.batch_size, "accum": cfg.accum, "world": run.world,
        "mask_ratio": cfg.mask_ratio, "kept": run.kept, "graphs": run.info["graphs"], "compile": cfg.compile,
        "device": run.device, "device_name": device_name(run.device),
        "peak_tflops": run.peak.tflops, "peak_source": run.peak.source,
        "gflop_per_step": run.flops.total / 1e9, "gflop_per_step_executed": run.executed.total / 1e9,
        "versions": versions(), "commit": commit(), "windows": len(w), "command": command(),
        "config": dataclasses.asdict(cfg),
        "profile": run.profiler.folder if run.profiler is not None else None,
    }


ROWS = (("wall time", "wall_s", "{:.1f} s"), ("steps", "steps", "{}"), ("img/s (median)", "img_per_s", "{:.1f}"),
        ("visible patches/s", "patches_per_s", "{:.0f}"), ("step ms (median)", "step_ms", "{:.1f}"),
        ("data wait", "data_wait_pct", "{:.1f} %"), ("TFLOP/s (model)", "tflops", "{:.3g}"),
        ("TFLOP/s (executed)", "tflops_executed", "{:.3g}"), ("MFU", "mfu_pct", "{:.3g} %"),
        ("peak memory", "peak_mem_gib", "{:.2f} GiB"), ("loss first -> last", None, None),
        ("model / backend", None, None), ("impls", "impls", None), ("precision", "precision", "{}"),
        ("device", "device_name", "{}"), ("peak used", "peak_source", "{}"), ("torch", None, None),
        ("commit", None, None))


def field(s: dict, label: str, key: str | None, fmt: str | None) -> str:
    """One row's value as printed (shared with ``train.report``)."""
    if label == "loss first -> last":
        return "-" if s["loss_first"] is None else f"{s['loss_first']:.3f} -> {s['loss_last']:.3f}"
    if label == "model / backend":
        return f"{s['model']} / {s['backend']} (batch {s['batch']} x {s['accum']} x {s['world']})"
    if label == "torch":
        v = s["versions"]
        return f"{v['torch']} (CUDA {v['cuda']}), triton {v['triton']}"
    if label == "commit":
        c = s["commit"]
        return "-" if not c.get("sha") else c["sha"] + (" (+ local changes)" if c.get("dirty") else "")
    v = s.get(key)
    if v is None:
        return "-"
    if key == "impls":
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return fmt.format(v)


def summary_table(s: dict) -> str:
    width = max(len(r[0]) for r in ROWS)
    return "\n".join(f"  {label:<{width}}  {field(s, label, key, fmt)}" for label, key, fmt in ROWS)


def write_summary(path: str, summary: dict) -> None:
    write_atomically(path, lambda f: f.write(json.dumps(summary, indent=1).encode()))
