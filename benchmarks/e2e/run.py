"""One case: build the model and the trainer's own step, time it, count what costs host time, measure memory."""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict

import torch

from mmearth_kernels.masking import num_kept
from mmearth_kernels.models import MPMAE
from mmearth_kernels.models.flops import step_flops
from mmearth_kernels.models.registry import BACKEND_SPECS
from mmearth_kernels.testing import training_batch
from train.hardware import resolve_peak
from train.step import GraphedTrainStep, TrainStep, make_optimizer
from train.telemetry import peak_rss_mib, reset_peak_rss

from .cases import GEOMETRIES, Case, parse_backend
from .counting import count_ops, profile_launches

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GRAPH_WARMUP = 3  # eager steps before capture, as the trainer (--cuda-graphs)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def build(case: Case, device: str):
    """The model, and one training step as the trainer runs it (``train.step``): fused AdamW over the
    trainer's parameter groups, the trainer's init and decoder, a synthetic batch with every task."""
    b = parse_backend(case.backend)
    img, patch = GEOMETRIES[case.geometry]
    torch.manual_seed(0)
    model = MPMAE(case.size, img_size=img, patch_size=patch, tasks=case.tasks, mask_ratio=case.mask_ratio,
                  backend=b.kind, impl=b.impl).to(device)
    opt = make_optimizer(model, 0.05, capturable=b.graphed)
    net = torch.compile(model) if b.compiled else model
    kept = num_kept(model.grid ** 2, case.mask_ratio)
    step = TrainStep(model, opt, kept, net=net, precision=case.precision)
    step.set_lr(1e-4)
    runner = GraphedTrainStep(step, warmup_steps=GRAPH_WARMUP) if b.graphed else step
    mb = training_batch(case.batch, img, model.tasks, device)
    mb["mask"] = model.random_mask(case.batch, generator=torch.Generator().manual_seed(1))[0].to(device)
    return model, lambda: runner([mb])


# -- memory -------------------------------------------------------------------------------------
def memory_of(r: dict) -> float | None:
    return r.get("peak_mem_mib", r.get("peak_rss_mib"))


def _page_in(case: Case, device: str) -> None:
    """One batch-1 eager step of the same configuration, then give freed memory back to the OS: code
    pages, thread pools and lazily initialised libraries are then resident before the RSS baseline."""
    eager = Case(case.backend.replace("-graphed", "").replace("-compiled", ""), case.size, case.geometry,
                 case.mask_ratio, case.precision, 1, case.tasks)
    _, step = build(eager, device)
    step()
    del step
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# -- one case -----------------------------------------------------------------------------------
_PEAKS: dict = {}


def peak_for(device: str, precision: str):
    """The MFU denominator (``train.hardware``), measured once per process and precision on CPU."""
    key = (device, precision)
    if key not in _PEAKS:
        _PEAKS[key] = resolve_peak(device, precision)
    return _PEAKS[key]


def run_case(case: Case, device: str, warmup: int, repeats: int, page_in: bool = False, count: bool = True) -> dict:
    """Time one case. GPU peak memory covers the timed steps only (reset after the warm-up: its eager steps, graph
    capture, compilation and Triton's autotuning buffer are not the step's); CPU peak RSS is the case's above what
    the process held before it. The warm-up's time is reported apart (``warmup_s``: compile and autotune in it)."""
    b = parse_backend(case.backend)
    if b.graphed:  # the warm-up must include the eager steps and the capture
        warmup = max(warmup, GRAPH_WARMUP + 1)
    if page_in and device == "cpu":
        _page_in(case, device)
    if device == "cuda":
        torch.cuda.empty_cache()
    rss_reset = reset_peak_rss()  # CPU: the case's resident set above what the process held before it
    rss0 = peak_rss_mib()
    t0 = time.perf_counter()
    model, step = build(case, device)
    seen = None
    for _ in range(warmup):
        seen = step()
    _sync(device)
    warm_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        seen = step()
        _sync(device)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    kept = num_kept(model.grid ** 2, case.mask_ratio)
    flops = step_flops(model, case.batch, kept)
    executed = step_flops(model, case.batch, kept, all_sites=BACKEND_SPECS[b.kind].all_sites)
    peak = peak_for(device, case.precision)
    tflops = flops.total / med / 1e12
    out = {**asdict(case), "device": device, "ms_step": 1e3 * med, "ms_min": 1e3 * min(times),
           "ms_max": 1e3 * max(times), "img_s": case.batch / med, "repeats": repeats, "warmup": warmup,
           "warmup_s": warm_s, "loss": float(seen[0]) if seen is not None else None,
           "kept_fraction": kept / model.grid ** 2, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "gflop_step": flops.total / 1e9, "tflops": tflops, "tflops_executed": executed.total / med / 1e12,
           "mfu_pct": 100 * tflops / peak.tflops if peak.tflops else None, "peak_tflops": peak.tflops,
           "peak_source": peak.source}
    if device == "cuda":  # the timed steps' peak above what was allocated when they began
        out["peak_mem_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    elif page_in:  # in a shared process the allocator's cached memory makes the RSS meaningless
        hwm = peak_rss_mib()
        if rss_reset and hwm is not None and rss0 is not None:
            out["peak_rss_mib"] = hwm - rss0
    if count:  # after the timing and the memory: what one more step dispatches / launches
        try:
            out.update(profile_launches(step) if device == "cuda" else count_ops(step))
        except Exception as e:  # a counting failure must not lose the timing
            out["count_error"] = f"{type(e).__name__}: {e}"
    del model, step
    return out


def run_isolated(case: Case, device: str, warmup: int, repeats: int) -> dict:
    """``run_case`` in a fresh interpreter: on CPU the only honest per-case peak RSS (in one process the
    allocator keeps freed memory, so later cases would look free), and no cache left by earlier cases."""
    job = json.dumps({"case": asdict(case), "device": device, "warmup": warmup, "repeats": repeats})
    proc = subprocess.run([sys.executable, "-m", "benchmarks.e2e", "--worker", job], capture_output=True, text=True,
                          cwd=REPO)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"worker exited {proc.returncode}: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def host_cost(backend: str, size: str, geometry: str, mask_ratio: float, precision: str, device: str,
              repeats: int = 5) -> dict:
    """Batch 1, eager: the host's cost of a step (on a GPU every op is then launch-bound), and what it
    dispatches. A CPU proxy for the launch-bound regime, comparable across backends."""
    case = Case(backend, size, geometry, mask_ratio, precision, 1)
    r = run_case(case, device, warmup=2, repeats=repeats)
    return {"backend": backend, "size": size, "geometry": geometry, "mask_ratio": mask_ratio, "precision": precision,
            "device": device, "host_ms_b1": r["ms_step"],
            **{k: v for k, v in r.items() if k.endswith("_per_step")}}
