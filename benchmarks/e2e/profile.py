"""``--profile``: where one step's time goes, by op category, with a Chrome trace."""

from __future__ import annotations

import os
import time
from dataclasses import asdict

from torch.profiler import ProfilerActivity, profile

from .cases import Case
from .run import GRAPH_WARMUP, _sync, build


def categorise(name: str) -> str:
    n = name.lower()
    if n.startswith("mmearth::") or "sparse_dwconv" in n or "grn_" in n or n.startswith(("triton_", "_grn", "_dw")):
        return "ours (sparse dwconv, GRN)"
    if any(s in n for s in ("mm", "gemm", "linear", "matmul", "cublas", "cutlass", "sm90_", "sm80_")):
        return "matmul (cuBLAS / CPU BLAS)"
    if any(s in n for s in ("conv", "cudnn")):
        return "convolution (cuDNN / CPU)"
    if any(s in n for s in ("layer_norm", "native_layer_norm")):
        return "layer norm"
    if any(s in n for s in ("adam", "foreach", "_fused")):
        return "optimiser"
    if any(s in n for s in ("gather", "scatter", "index", "argsort", "sort", "nonzero", "masked", "where")):
        return "gather / scatter / indexing"
    if any(s in n for s in ("copy", "contiguous", "permute", "transpose", "clone", "cat", "stack", "to_", "fill")):
        return "copies / layout"
    return "elementwise / reductions / other"


def profile_case(case: Case, device: str, steps: int, warmup: int, stem: str) -> dict:
    model, step = build(case, device)
    if "-graphed" in case.backend:  # eager warm-up steps and the capture first
        warmup = max(warmup, GRAPH_WARMUP + 1)
    for _ in range(warmup):
        step()
    _sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    wall_ms = 1e3 * (time.perf_counter() - t0) / steps
    trace = f"{stem}-{case.backend}-{case.size}-trace.json"
    prof.export_chrome_trace(trace)
    # self time per op: CUDA kernels on GPU (device time), operators on CPU; leaf work, no double count
    attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    if device == "cuda":  # keep only kernels (device-side events), not their launching operators
        events = [e for e in events if getattr(e, "device_type", None) is not None and
                  str(e.device_type).endswith("CUDA")] or events
    total = sum(getattr(e, attr) for e in events) / steps / 1e3
    ops = sorted(({"name": e.key, "ms": getattr(e, attr) / steps / 1e3, "calls": e.count // steps,
                   "category": categorise(e.key)} for e in events), key=lambda o: -o["ms"])
    cats: dict[str, float] = {}
    for o in ops:
        cats[o["category"]] = cats.get(o["category"], 0.0) + o["ms"]
    return {"case": asdict(case), "wall_ms_per_step": wall_ms, "profiled_ms_per_step": total, "trace": trace,
            "categories": dict(sorted(cats.items(), key=lambda kv: -kv[1])), "top_ops": ops[:25]}


def profile_markdown(p: dict) -> str:
    c = Case(**p["case"])
    tot = p["profiled_ms_per_step"]
    lines = [f"Profile: {c.label()} - {p['wall_ms_per_step']:.1f} ms/step wall (profiled, so slower), "
             f"{tot:.1f} ms of op self time; trace `{os.path.basename(p['trace'])}`", "",
             "| category | ms/step | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {100 * v / tot:.0f}% |" for k, v in p["categories"].items()]
    lines += ["", "| top ops (self time) | calls/step | ms/step | share | category |", "|---|---:|---:|---:|---|"]
    lines += [f"| `{o['name']}` | {o['calls']} | {o['ms']:.2f} | {100 * o['ms'] / tot:.1f}% | {o['category']} |"
              for o in p["top_ops"][:15]]
    return "\n".join(lines) + "\n"
