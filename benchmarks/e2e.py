"""End-to-end MP-MAE training-step throughput: dense vs sparse vs MinkowskiEngine, side by side.

    python -m benchmarks.e2e                                   # the quick grid for this device
    python -m benchmarks.e2e --backends dense,sparse --sizes atto,tiny --mask-ratios 0,0.4,0.6,0.75 \\
        --precisions fp32,bf16 --geometries 56/8,112/16 --batch 32
    python -m benchmarks.e2e --compare benchmarks/results/e2e-<earlier>.json
    python -m benchmarks.e2e --profile --backends dense,sparse   # torch.profiler table + Chrome trace
    python -m benchmarks.e2e --scaling                         # kept fraction, batch and width sweeps
    python -m benchmarks.e2e --smoke                           # CI: tiny batch, one repeat, every output

One step = forward of the full MP-MAE (all 12 tasks by default), backward, AdamW step, on synthetic
in-memory batches (no data loading). Each case: fresh model (same seed, so the same weights on every
backend), ``--warmup`` untimed steps (compilation happens there and is reported separately), then the
median of ``--repeats`` timed steps (synchronised on CUDA). Memory: peak allocated on GPU; on CPU the
process's peak resident set during the case (Linux VmHWM, reset per case) above its resident set when
the case began.

Backends: ``dense`` (dense-masked eager), ``dense-compiled``, ``sparse`` (best impl for the device),
``sparse-<impl>`` (ref, cpu, cuda, triton), ``sparse-compiled``, ``minkowski`` (when importable).

Writes ``<out>/<name>.json`` (full context and every case), ``<name>.md`` (the table, ratios to dense
eager measured in the same run) and ``<name>-throughput.png`` / ``<name>-memory.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from mmearth_kernels.ops import available_impls
from mmearth_kernels.masking import num_kept
from mmearth_kernels.models import MPMAE
from mmearth_kernels.models.mpmae import IMAGE_TASKS, PIXEL_TASKS, TASK_SETS

HERE = os.path.dirname(os.path.abspath(__file__))
GEOMETRIES = {"56/8": (56, 8), "112/16": (112, 16)}
PRECISIONS = ("fp32", "bf16")


# -- cases --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    backend: str
    size: str
    geometry: str
    mask_ratio: float
    precision: str
    batch: int
    tasks: str = "all"

    @property
    def key(self) -> tuple:
        return (self.backend, self.size, self.geometry, self.mask_ratio, self.precision, self.batch, self.tasks)

    def label(self) -> str:
        return f"{self.backend} {self.size} {self.geometry} mask {self.mask_ratio:g} {self.precision} b{self.batch}"


def available_backends(device: str) -> list[str]:
    impls = [i for i in available_impls("sparse_dwconv2d", device) if i in available_impls("grn", device)]
    out = ["dense", "dense-compiled", "sparse", *(f"sparse-{i}" for i in impls), "sparse-compiled"]
    try:
        import MinkowskiEngine  # noqa: F401

        out.append("minkowski")
    except ImportError:
        pass
    return out


def parse_backend(name: str) -> tuple[str, str, bool]:
    """``"sparse-cpu-compiled"`` -> (encoder backend, impl, compiled)."""
    compiled = name.endswith("-compiled")
    base = name[: -len("-compiled")] if compiled else name
    kind, _, impl = base.partition("-")
    if kind not in ("dense", "sparse", "minkowski") or (impl and kind != "sparse"):
        raise ValueError(f"unknown backend {name!r}: use dense, dense-compiled, sparse, sparse-<impl>, "
                         "sparse-compiled or minkowski")
    return kind, impl or "auto", compiled


# -- synthetic batches --------------------------------------------------------------------------
def synthetic_batch(batch: int, img: int, tasks, device: str, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """An input and every task's target in the shapes and dtypes ``train.data`` yields, with some no-data."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 12, img, img, generator=g)
    t = {}
    for name in tasks:
        if name in ("dynamic_world", "esa_worldcover"):
            t[name] = torch.randint(-1, PIXEL_TASKS[name], (batch, img, img), generator=g)
        elif name in PIXEL_TASKS:
            v = torch.randn(batch, PIXEL_TASKS[name], img, img, generator=g)
            v[:, :, : img // 8] = float("nan")
            t[name] = v
        elif name in ("biome", "eco_region"):
            t[name] = torch.randint(0, IMAGE_TASKS[name], (batch,), generator=g)
        else:
            t[name] = torch.randn(batch, IMAGE_TASKS[name], generator=g)
    return x.to(device), {k: v.to(device) for k, v in t.items()}


# -- memory -------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:  # Linux: writing 5 resets VmHWM (the peak resident set) to the current resident set
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# -- one case -----------------------------------------------------------------------------------
def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def build(case: Case, device: str):
    kind, impl, compiled = parse_backend(case.backend)
    img, patch = GEOMETRIES[case.geometry]
    torch.manual_seed(0)
    model = MPMAE(case.size, img_size=img, patch_size=patch, tasks=case.tasks, mask_ratio=case.mask_ratio,
                  backend=kind, impl=impl, init="standard").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05,
                            fused=True)  # as the trainer
    net = torch.compile(model) if compiled else model
    x, targets = synthetic_batch(case.batch, img, model.tasks, device)
    g = torch.Generator().manual_seed(1)
    mask, kept = model.random_mask(case.batch, generator=g)
    mask = mask.to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16) if case.precision == "bf16" else contextlib.nullcontext()

    def step():
        with autocast:
            loss = net(x, targets, mask, kept)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return model, step


def _page_in(case: Case, device: str) -> None:
    """One batch-1 eager step of the same configuration, then give freed memory back to the OS: code
    pages, thread pools and lazily initialised libraries are then resident before the RSS baseline."""
    import gc

    eager = Case(case.backend.replace("-compiled", ""), case.size, case.geometry, case.mask_ratio, case.precision,
                 1, case.tasks)
    _, step = build(eager, device)
    step()
    del step
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def run_case(case: Case, device: str, warmup: int, repeats: int, page_in: bool = False) -> dict:
    if page_in and device == "cpu":
        _page_in(case, device)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_reset = _reset_peak_rss()
    rss0 = _status_kib("VmRSS")
    t0 = time.perf_counter()
    model, step = build(case, device)
    loss = None
    for _ in range(warmup):
        loss = step()
    _sync(device)
    warm_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        loss = step()
        _sync(device)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    out = {**asdict(case), "device": device, "ms_step": 1e3 * med, "ms_min": 1e3 * min(times),
           "ms_max": 1e3 * max(times), "img_s": case.batch / med, "repeats": repeats, "warmup": warmup,
           "warmup_s": warm_s, "loss": float(loss.detach()) if loss is not None else None,
           "kept_fraction": num_kept(model.grid ** 2, case.mask_ratio) / model.grid ** 2,
           "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
    if device == "cuda":
        out["peak_mem_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    elif page_in:  # in a shared process the allocator's cached memory makes the RSS meaningless
        hwm = _status_kib("VmHWM")
        if rss_reset and hwm is not None and rss0 is not None:
            out["peak_rss_mib"] = (hwm - rss0) / 1024
    del model, step
    return out


def run_isolated(case: Case, device: str, warmup: int, repeats: int) -> dict:
    """``run_case`` in a fresh interpreter: on CPU the only honest per-case peak RSS (in one process the
    allocator keeps freed memory, so later cases would look free), and no cache left by earlier cases."""
    job = json.dumps({"case": asdict(case), "device": device, "warmup": warmup, "repeats": repeats})
    proc = subprocess.run([sys.executable, "-m", "benchmarks.e2e", "--worker", job], capture_output=True, text=True,
                          cwd=os.path.dirname(HERE))
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"worker exited {proc.returncode}: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_of(r: dict) -> float | None:
    return r.get("peak_mem_mib", r.get("peak_rss_mib"))


# -- context ------------------------------------------------------------------------------------
def context(device: str, args) -> dict:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE,
                             timeout=10).stdout.strip() or "unknown"
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, cwd=HERE, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "unknown", None
    try:
        import triton

        triton_v = triton.__version__
    except ImportError:
        triton_v = None
    cpu_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu_name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu_name)
    except OSError:
        pass
    return {"device": device, "cpu": cpu_name, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "torch": torch.__version__,
            "cuda": torch.version.cuda, "triton": triton_v, "python": platform.python_version(), "git": sha,
            "git_dirty": dirty, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "sparse_impls": {op: available_impls(op, device) for op in ("sparse_dwconv2d", "grn")},
            "command": "python -m benchmarks.e2e " + " ".join(sys.argv[1:]), "options": vars(args)}


# -- reporting ----------------------------------------------------------------------------------
def _group_key(r: dict) -> tuple:
    return (r["size"], r["geometry"], r["precision"], r["batch"], r["tasks"], r["mask_ratio"])


def ratios_to_dense(results: list[dict]) -> None:
    """Adds ``speedup_vs_dense`` / ``memory_vs_dense`` against dense eager of the same group (same run)."""
    # a grid row wins over a scaling-sweep row of the same case
    ordered = sorted(results, key=lambda r: not r.get("sweep"))
    dense = {_group_key(r): r for r in ordered if r["backend"] == "dense" and "ms_step" in r}
    for r in results:
        d = dense.get(_group_key(r))
        if d and "ms_step" in r:
            r["speedup_vs_dense"] = d["ms_step"] / r["ms_step"]
            if memory_of(r) and memory_of(d):
                r["memory_vs_dense"] = memory_of(r) / memory_of(d)


def _ratio(v) -> str:
    return "" if v is None else f"{v:.2f}x"


def markdown(results: list[dict], ctx: dict) -> str:
    mem_name = "peak GPU MiB" if ctx["device"] == "cuda" else "peak RSS MiB"
    dev = ctx["gpu"] if ctx["device"] == "cuda" else f"{ctx['cpu']} ({ctx['threads']} threads)"
    lines = [f"End-to-end MP-MAE training step ({ctx['device']}: {dev}; torch {ctx['torch']}, git {ctx['git']}, "
             f"{ctx['date']})", "", f"`{ctx['command']}`", "",
             f"| model | geometry | precision | batch | mask | backend | ms/step | img/s | {mem_name} | "
             "speed-up vs dense | memory vs dense |",
             "|---|---|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in sorted(results, key=lambda r: (_group_key(r), r["backend"])):
        if "ms_step" not in r:
            lines.append(f"| {r['size']} | {r['geometry']} | {r['precision']} | {r['batch']} | {r['mask_ratio']:g} | "
                         f"{r['backend']} | failed: {r.get('error', '?')[:60]} | | | | |")
            continue
        mem = memory_of(r)
        lines.append(f"| {r['size']} | {r['geometry']} | {r['precision']} | {r['batch']} | {r['mask_ratio']:g} | "
                     f"{r['backend']} | {r['ms_step']:.1f} | {r['img_s']:.1f} | "
                     f"{'' if mem is None else f'{mem:.0f}'} | "
                     f"{_ratio(r.get('speedup_vs_dense'))} | {_ratio(r.get('memory_vs_dense'))} |")
    return "\n".join(lines) + "\n"


def grid_markdown(results: list[dict], ctx: dict) -> str:
    """The grid table (scaling-sweep rows left out) and the kept-fraction fits."""
    md = markdown([r for r in results if not r.get("sweep")], ctx)
    return md + "\n" + fits_markdown(scaling_fits(results), "Step time against the kept fraction (sparse backends):")


def plots(results: list[dict], ctx: dict, stem: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "ms_step" in r]
    groups = sorted({(r["size"], r["geometry"], r["precision"], r["batch"]) for r in ok})
    if not groups:
        return []
    written = []
    dev = ctx["gpu"] if ctx["device"] == "cuda" else f"CPU, {ctx['threads']} threads"
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, grp in zip(axes[0], groups):
        rows = [r for r in ok if (r["size"], r["geometry"], r["precision"], r["batch"]) == grp]
        for backend in sorted({r["backend"] for r in rows}):
            pts = sorted((r["mask_ratio"], r["img_s"]) for r in rows if r["backend"] == backend)
            ax.plot(*zip(*pts), marker="o", label=backend)
        ax.set_title(f"{grp[0]} {grp[1]} {grp[2]} batch {grp[3]}", fontsize=9)
        ax.set_xlabel("mask ratio")
        ax.set_ylabel("img/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"MP-MAE training throughput ({dev})", fontsize=10)
    _save(fig, stem + "-throughput.png", written)

    mem_rows = [r for r in ok if memory_of(r) is not None]
    if mem_rows:
        labels = sorted({(r["size"], r["geometry"], r["precision"], r["mask_ratio"]) for r in mem_rows})
        backends = sorted({r["backend"] for r in mem_rows})
        fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(labels) * len(backends) ** 0.5), 3.6))
        w = 0.8 / len(backends)
        for i, b in enumerate(backends):
            vals = [next((memory_of(r) for r in mem_rows if r["backend"] == b and
                          (r["size"], r["geometry"], r["precision"], r["mask_ratio"]) == lab), 0) for lab in labels]
            ax.bar([j + i * w for j in range(len(labels))], vals, w, label=b)
        ax.set_xticks([j + 0.4 - w / 2 for j in range(len(labels))])
        ax.set_xticklabels([f"{s} {g}\n{p} m{m:g}" for s, g, p, m in labels], fontsize=7)
        ax.set_ylabel("peak GPU MiB" if ctx["device"] == "cuda" else "peak RSS above start, MiB")
        ax.legend(fontsize=7)
        ax.set_title(f"Memory per backend ({dev})", fontsize=10)
        _save(fig, stem + "-memory.png", written)
    return written


def _save(fig, path: str, written: list[str]) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)


def compare(new: list[dict], old_path: str) -> str:
    with open(old_path) as f:
        old_doc = json.load(f)
    old = {tuple(r[k] for k in ("backend", "size", "geometry", "mask_ratio", "precision", "batch", "tasks")): r
           for r in old_doc["results"] if "ms_step" in r}
    lines = [f"Compared with {old_path} (git {old_doc['context'].get('git')}, {old_doc['context'].get('date')}, "
             f"{old_doc['context'].get('gpu') or old_doc['context'].get('cpu')})", "",
             "| case | old ms/step | new ms/step | new/old time |", "|---|---:|---:|---:|"]
    matched = 0
    for r in new:
        k = tuple(r[k] for k in ("backend", "size", "geometry", "mask_ratio", "precision", "batch", "tasks"))
        if k in old and "ms_step" in r:
            matched += 1
            o = old[k]
            lines.append(f"| {Case(*k).label()} | {o['ms_step']:.1f} | {r['ms_step']:.1f} | "
                         f"{r['ms_step'] / o['ms_step']:.2f} |")
    if not matched:
        lines.append("| (no case in common) | | | |")
    return "\n".join(lines) + "\n"


# -- scaling ------------------------------------------------------------------------------------
def linear_fit(xs: list[float], ys: list[float]) -> dict:
    """Least squares y = a + b x, with R^2."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx else float("nan")
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    return {"intercept": a, "slope": b, "r2": 1 - ss_res / ss_tot if ss_tot else float("nan"), "points": n}


def scaling_fits(results: list[dict]) -> list[dict]:
    """For each sparse backend and group: ms/step against kept fraction (slope = cost of the visible
    part; intercept = what does not shrink with masking: decoder, heads, losses, optimiser, overheads)."""
    fits = []
    ok = [r for r in results if "ms_step" in r and r["backend"].startswith(("sparse", "minkowski"))]
    for key in sorted({(r["backend"], r["size"], r["geometry"], r["precision"], r["batch"]) for r in ok}):
        rows = [r for r in ok if (r["backend"], r["size"], r["geometry"], r["precision"], r["batch"]) == key]
        if len({r["kept_fraction"] for r in rows}) >= 2:
            fit = linear_fit([r["kept_fraction"] for r in rows], [r["ms_step"] for r in rows])
            fits.append(dict(zip(("backend", "size", "geometry", "precision", "batch"), key), x="kept_fraction",
                             **fit))
    return fits


def fits_markdown(fits: list[dict], title: str) -> str:
    if not fits:
        return ""
    lines = [title, "", "| backend | model | geometry | precision | batch | x | fixed ms | ms per unit x | R^2 |",
             "|---|---|---|---|---|---|---:|---:|---:|"]
    for f in fits:
        lines.append(f"| {f['backend']} | {f['size']} | {f['geometry']} | {f['precision']} | {f.get('batch', '')} | "
                     f"{f['x']} | {f['intercept']:.1f} | {f['slope']:.1f} | {f['r2']:.3f} |")
    return "\n".join(lines) + "\n"


# -- profile ------------------------------------------------------------------------------------
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
    from torch.profiler import ProfilerActivity, profile

    model, step = build(case, device)
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


# -- command line -------------------------------------------------------------------------------
def _list(s: str, conv=str) -> list:
    return [conv(v) for v in s.split(",") if v.strip()]


def quick_grid(device: str) -> dict:
    """What runs with no grid option: the comparisons the README quotes, in minutes."""
    if device == "cuda":
        # Batch 256, bf16 (the trainer's GPU default): on an H200 at batch 64 an atto step took 53 ms
        # for well under 1 ms of arithmetic, i.e. it timed launches and Python, not the encoder
        # (benchmarks/results/e2e-nvidia-h200-2026-11-28.md). fp32 is one --precisions away.
        # sparse = impl "auto" = Triton on CUDA; sparse-cuda beside it says which kernels to prefer
        backends = ["dense", "dense-compiled", "sparse", "sparse-cuda", "sparse-compiled"]
        have = available_backends(device)
        return dict(backends=",".join(b for b in backends if b in have), sizes="atto,tiny",
                    geometries="56/8", mask_ratios="0.6", precisions="bf16", batch=256)
    return dict(backends="dense,sparse", sizes="atto", geometries="56/8", mask_ratios="0,0.4,0.6,0.75",
                precisions="fp32", batch=32)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--backends", help="comma-separated; 'all' = every backend importable here "
                                       "(quick grid: dense,sparse on CPU; + compiled on GPU)")
    ap.add_argument("--sizes", help="ConvNeXt V2 sizes, e.g. atto,tiny,base")
    ap.add_argument("--geometries", help="image/patch: 56/8 and/or 112/16")
    ap.add_argument("--mask-ratios", help="e.g. 0,0.4,0.6,0.75")
    ap.add_argument("--precisions", help="fp32 and/or bf16 (autocast)")
    ap.add_argument("--batch", type=int, help="samples per step (quick grid: 32 CPU, 256 GPU)")
    ap.add_argument("--tasks", default="all", help="pretext tasks (all, s2, pixel, image)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per case (compilation happens here)")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per case (the median is reported)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    ap.add_argument("--name", default="", help="output file stem (default e2e-<device>-<date>)")
    ap.add_argument("--compare", default="", help="an earlier JSON from this script: print new/old times")
    ap.add_argument("--profile", action="store_true", help="profile each selected case instead of timing the grid")
    ap.add_argument("--profile-steps", type=int, default=3, help="steps recorded by --profile")
    ap.add_argument("--scaling", action="store_true",
                    help="also sweep the sparse backend over kept fraction, batch size and model width and fit them")
    ap.add_argument("--smoke", action="store_true", help="CI: batch 2, one warm-up, one repeat (numbers meaningless)")
    ap.add_argument("--isolate", action=argparse.BooleanOptionalAction, default=None,
                    help="run each case in a fresh process (default on CPU, where it is the only honest peak RSS)")
    ap.add_argument("--report", default="", help="only rewrite the markdown and plots of an earlier JSON "
                                                 "(e.g. one a time limit cut short)")
    ap.add_argument("--worker", default="", help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if args.worker:  # one case for run_isolated: the result is the last stdout line
        job = json.loads(args.worker)
        print(json.dumps(run_case(Case(**job["case"]), job["device"], job["warmup"], job["repeats"], page_in=True)))
        return {}
    if args.report:
        return write_report(args.report)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    quick = quick_grid(device)
    for k, v in quick.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.smoke:
        args.batch, args.warmup, args.repeats = 2, 1, 1
    if args.isolate is None:
        args.isolate = device == "cpu"
    run = run_isolated if args.isolate else run_case
    have = available_backends(device)
    backends = have if args.backends == "all" else _list(args.backends)
    for b in backends:
        parse_backend(b)
        if b not in have:
            raise SystemExit(f"--backends: {b!r} is not available on {device} (available: {', '.join(have)})")
    for g in _list(args.geometries):
        if g not in GEOMETRIES:
            raise SystemExit(f"--geometries: {g!r} is not one of {', '.join(GEOMETRIES)}")
    for p in _list(args.precisions):
        if p not in PRECISIONS:
            raise SystemExit(f"--precisions: {p!r} is not one of {', '.join(PRECISIONS)}")
    if args.tasks not in TASK_SETS:
        raise SystemExit(f"--tasks must be one of {', '.join(TASK_SETS)}")
    ratios = _list(args.mask_ratios, float)
    if any(not 0 <= r < 1 for r in ratios):
        raise SystemExit("--mask-ratios must be in [0, 1)")
    cases = [Case(b, s, g, m, p, args.batch, args.tasks) for s in _list(args.sizes) for g in _list(args.geometries)
             for p in _list(args.precisions) for m in ratios for b in backends]
    cases.sort(key=lambda c: c.backend.endswith("-compiled"))  # eager first: a time limit keeps the cheap ones
    os.makedirs(args.out, exist_ok=True)
    name = args.name or f"e2e-{device}-{datetime.date.today().isoformat()}" + ("-smoke" if args.smoke else "")
    stem = os.path.join(args.out, name)
    ctx = context(device, args)
    from tqdm import tqdm

    doc: dict = {"context": ctx}
    if args.profile:
        doc["profiles"] = []
        for c in tqdm(cases, desc="profile", unit="case", file=sys.stderr):
            p = profile_case(c, device, 1 if args.smoke else args.profile_steps, args.warmup, stem)
            doc["profiles"].append(p)
            print(profile_markdown(p))
        with open(stem + "-profile.md", "w") as f:
            f.write("\n".join(profile_markdown(p) for p in doc["profiles"]))
        _write_json(stem + "-profile.json", doc)
        return doc

    results = []
    doc["results"] = results  # rewritten after every case: a killed run keeps what it measured
    bar = tqdm(cases, desc="e2e", unit="case", file=sys.stderr)
    for c in bar:
        bar.set_postfix_str(c.label())
        try:
            results.append(run(c, device, args.warmup, args.repeats))
        except Exception as e:  # one backend failing (e.g. a compile error) must not lose the others
            results.append({**asdict(c), "device": device, "error": f"{type(e).__name__}: {e}"})
            print(f"[e2e] {c.label()} failed: {type(e).__name__}: {e}", file=sys.stderr)
        _write_json(stem + ".json", doc)
    if args.scaling:
        results += scaling_sweeps(args, device, backends, run)
    ratios_to_dense(results)
    doc["results"] = results
    doc["scaling"] = scaling_fits(results)
    md = grid_markdown(results, ctx)
    if args.scaling:
        doc["scaling_batch_width"] = batch_width_fits(results)
        md += "\n" + batch_width_markdown(doc["scaling_batch_width"])
    if args.compare:
        md += "\n" + compare(results, args.compare)
    _write_json(stem + ".json", doc)
    with open(stem + ".md", "w") as f:
        f.write(md)
    pngs = plots([r for r in results if not r.get("sweep")], ctx, stem)
    print(md)
    print(f"[e2e] wrote {stem}.json, {stem}.md" + "".join(f", {p}" for p in pngs), file=sys.stderr)
    failed = [r for r in results if "error" in r]
    if failed:
        raise SystemExit(f"[e2e] {len(failed)} case(s) failed (see the table)")
    return doc


def write_report(path: str) -> dict:
    with open(path) as f:
        doc = json.load(f)
    results = doc["results"]
    ratios_to_dense(results)
    stem = path[:-5] if path.endswith(".json") else path
    md = grid_markdown(results, doc["context"])
    with open(stem + ".md", "w") as f:
        f.write(md)
    plots([r for r in results if not r.get("sweep")], doc["context"], stem)
    print(md)
    return doc


def scaling_sweeps(args, device: str, backends: list[str], run) -> list[dict]:
    """Sparse backend (the first sparse one selected, else 'sparse'): kept fraction at the first size;
    batch size (x0.25, x0.5, x1) and width (atto, femto, pico, nano) at mask 0.6."""
    sparse = next((b for b in backends if b.startswith("sparse")), "sparse")
    size, geom, prec = _list(args.sizes)[0], _list(args.geometries)[0], _list(args.precisions)[0]
    sweep = [Case(sparse, size, geom, m, prec, args.batch, args.tasks) for m in (0.0, 0.25, 0.4, 0.6, 0.75, 0.9)]
    batches = sorted({max(1, args.batch // 4), max(1, args.batch // 2), args.batch})
    sweep += [Case(b, size, geom, 0.6, prec, n, args.tasks) for n in batches for b in (sparse, "dense")]
    widths = ("atto", "femto", "pico", "nano") if not args.smoke else ("atto", "femto")
    sweep += [Case(b, w, geom, 0.6, prec, args.batch, args.tasks) for w in widths for b in (sparse, "dense")]
    out = []
    from tqdm import tqdm

    for c in tqdm(list(dict.fromkeys(sweep)), desc="scaling", unit="case", file=sys.stderr):  # unique, in order
        try:
            r = run(c, device, args.warmup, args.repeats)
        except Exception as e:
            r = {**asdict(c), "device": device, "error": f"{type(e).__name__}: {e}"}
        r["sweep"] = True
        out.append(r)
    return out


def batch_width_fits(results: list[dict]) -> dict:
    from mmearth_kernels.models.convnextv2 import SIZES

    ok = [r for r in results if r.get("sweep") and "ms_step" in r]
    out = {"batch": [], "width": []}
    for backend in sorted({r["backend"] for r in ok}):
        rows = [r for r in ok if r["backend"] == backend and r["mask_ratio"] == 0.6]
        by_size = {}
        for r in rows:
            by_size.setdefault(r["size"], []).append(r)
        for size, rs in by_size.items():
            pts = sorted({(r["batch"], r["ms_step"]) for r in rs})
            if len(pts) >= 2:
                out["batch"].append({"backend": backend, "size": size, **linear_fit(*map(list, zip(*pts))),
                                     "x": "batch"})
        biggest = max((r["batch"] for r in rows), default=None)
        pts = sorted({(SIZES[r["size"]][1][0], r["ms_step"]) for r in rows if r["batch"] == biggest})
        if len(pts) >= 2:
            out["width"].append({"backend": backend, "points": pts, "x": "stage-1 width",
                                 "cost_ratio_last_over_first": pts[-1][1] / pts[0][1],
                                 "width_ratio_last_over_first": pts[-1][0] / pts[0][0]})
    return out


def batch_width_markdown(fits: dict) -> str:
    lines = ["Cost against batch size (mask 0.6): ms/step = fixed + per-sample x batch", "",
             "| backend | model | fixed ms | ms per sample | R^2 |", "|---|---|---:|---:|---:|"]
    lines += [f"| {f['backend']} | {f['size']} | {f['intercept']:.1f} | {f['slope']:.2f} | {f['r2']:.3f} |"
              for f in fits["batch"]]
    lines += ["", "Cost against model width (mask 0.6, largest batch): (stage-1 width, ms/step)", ""]
    lines += [f"- {f['backend']}: " + ", ".join(f"{w}: {ms:.1f} ms" for w, ms in f["points"]) +
              f" ({f['width_ratio_last_over_first']:.1f}x width -> {f['cost_ratio_last_over_first']:.2f}x time)"
              for f in fits["width"]]
    return "\n".join(lines) + "\n"


def _write_json(path: str, doc: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=lambda o: None if isinstance(o, float) and math.isnan(o) else str(o))
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
