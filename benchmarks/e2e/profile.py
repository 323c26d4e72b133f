"""``--profile``: where one step's time goes, by op category, with a Chrome trace. The categories, the op table
and its markdown are the trainer's own (``train/profiling.py``): one implementation for both."""

from __future__ import annotations

import time
from dataclasses import asdict

from torch.profiler import ProfilerActivity, profile, record_function

from train.profiling import op_table, op_table_markdown, quiet_cpu_only_profiler

from .cases import Case
from .run import GRAPH_WARMUP, _sync, build


def profile_case(case: Case, device: str, steps: int, warmup: int, stem: str) -> dict:
    model, step = build(case, device)
    if "-graphed" in case.backend:  # eager warm-up steps and the capture first
        warmup = max(warmup, GRAPH_WARMUP + 1)
    for _ in range(warmup):
        step()
    _sync(device)
    quiet_cpu_only_profiler()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=acts, record_shapes=True) as prof:
        for i in range(steps):  # each step in a range named as the trainer's profiler names them (op_table sums them)
            with record_function(f"ProfilerStep#{i}"):
                step()
                if i == steps - 1:
                    _sync(device)
    wall_ms = 1e3 * (time.perf_counter() - t0) / steps
    trace = f"{stem}-{case.backend}-{case.size}-trace.json"
    prof.export_chrome_trace(trace)
    return {"case": asdict(case), "wall_ms_per_step": wall_ms, "trace": trace,
            **op_table(prof, steps, device == "cuda")}


def profile_markdown(p: dict) -> str:
    c = Case(**p["case"])
    return op_table_markdown(p, f"Profile: {c.label()} - {p['wall_ms_per_step']:.1f} ms/step wall (profiled); trace "
                                f"`{p['trace'].rsplit('/', 1)[-1]}`")
