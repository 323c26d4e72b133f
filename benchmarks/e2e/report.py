"""Tables, plots, comparisons and fits from the grid's results (the JSON holds everything they need)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

import torch

from mmearth_kernels.models.registry import BACKEND_SPECS, reference_backend
from mmearth_kernels.ops.registry import OPS

from train.summary import cpu_model

from .cases import BASELINES, Case, mode_baseline, parse_backend
from .run import memory_of

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASE_FIELDS = ("backend", "size", "geometry", "mask_ratio", "precision", "batch", "tasks")


def _case_key(r: dict) -> tuple:
    return tuple(r[k] for k in CASE_FIELDS)


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
    return {"device": device, "cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "torch": torch.__version__,
            "cuda": torch.version.cuda, "triton": triton_v, "python": platform.python_version(), "git": sha,
            "git_dirty": dirty, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "sparse_impls": {op: spec.available_impls(device) for op, spec in OPS.items()},
            "command": "python -m benchmarks.e2e " + " ".join(sys.argv[1:]), "options": vars(args)}


# -- ratios and the grid table ----------------------------------------------------------------------
def _group_key(r: dict) -> tuple:
    return (r["size"], r["geometry"], r["precision"], r["batch"], r["tasks"], r["mask_ratio"])


def ratios_to_baselines(results: list[dict]) -> None:
    """Adds, from the same run and group: ``speedup_vs_<reference>`` / ``memory_vs_<reference>`` (against the
    reference backend eager: ``speedup_vs_dense``, as before) and ``speedup_vs_<baseline>_same_mode`` against every
    baseline in the case's own execution mode (graphed against graphed, compiled against compiled)."""
    ordered = sorted(results, key=lambda r: not r.get("sweep"))  # a grid row wins over a sweep row
    by = {(_group_key(r), r["backend"]): r for r in reversed(ordered) if "ms_step" in r}
    ref = reference_backend()
    for r in results:
        if "ms_step" not in r:
            continue
        d = by.get((_group_key(r), ref))
        if d:
            r[f"speedup_vs_{ref}"] = d["ms_step"] / r["ms_step"]
            if memory_of(r) and memory_of(d):
                r[f"memory_vs_{ref}"] = memory_of(r) / memory_of(d)
        for base in BASELINES:
            b = by.get((_group_key(r), mode_baseline(r["backend"], base)))
            if b and b is not r:
                r[f"speedup_vs_{base}_same_mode"] = b["ms_step"] / r["ms_step"]


def _ratio(v) -> str:
    return "" if v is None else f"{v:.2f}x"


def _num(v, fmt="{:.0f}") -> str:
    return "" if v is None else fmt.format(v)


def markdown(results: list[dict], ctx: dict) -> str:
    cuda = ctx["device"] == "cuda"
    mem_name = "peak GPU MiB" if cuda else "peak RSS MiB"
    dev = ctx["gpu"] if cuda else f"{ctx['cpu']} ({ctx['threads']} threads)"
    count_cols = "kernels/step | launch calls/step | kernel ms/step" if cuda else "ops/step | custom ops/step"
    n_count = count_cols.count("|") + 1
    ref = reference_backend()
    lines = [f"End-to-end MP-MAE training step ({ctx['device']}: {dev}; torch {ctx['torch']}, git {ctx['git']}, "
             f"{ctx['date']})", "", f"`{ctx['command']}`", "",
             "Speed-ups are time ratios from this run: against "
             + " and ".join(f"{b} ({BACKEND_SPECS[b].summary})" for b in BASELINES)
             + f" in the same execution mode (eager, compiled, graphed), and against {ref} eager.", "",
             f"| model | geometry | precision | batch | mask | backend | ms/step | img/s | {mem_name} | "
             + "".join(f"vs {b}, same mode | " for b in BASELINES)
             + f"vs {ref} eager | memory vs {ref} | {count_cols} |",
             "|---|---|---|---|---|---|---:|---:|---:|" + "---:|" * (len(BASELINES) + 2 + n_count)]
    for r in sorted(results, key=lambda r: (_group_key(r), results.index(r))):
        head = (f"| {r['size']} | {r['geometry']} | {r['precision']} | {r['batch']} | {r['mask_ratio']:g} | "
                f"{r['backend']} |")
        if "ms_step" not in r:
            what = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r.get('error', '?')[:80]}"
            lines.append(f"{head} {what} |" + " |" * (len(BASELINES) + 5 + n_count))
            continue
        if cuda:
            counts = (f"{_num(r.get('kernels_per_step'))} | {_num(r.get('launch_calls_per_step'))} | "
                      f"{_num(r.get('kernel_ms_per_step'), '{:.2f}')}")
        else:
            counts = f"{_num(r.get('ops_per_step'))} | {_num(r.get('custom_ops_per_step'))}"
        lines.append(f"{head} {r['ms_step']:.1f} | {r['img_s']:.1f} | {_num(memory_of(r))} | "
                     + "".join(f"{_ratio(r.get(f'speedup_vs_{b}_same_mode'))} | " for b in BASELINES)
                     + f"{_ratio(r.get(f'speedup_vs_{ref}'))} | {_ratio(r.get(f'memory_vs_{ref}'))} | {counts} |")
    return "\n".join(lines) + "\n"


def host_cost_markdown(rows: list[dict], ctx: dict) -> str:
    """Batch-1 host cost: ms/step and what a step dispatches (on a GPU: launches), side by side."""
    if not rows:
        return ""
    cuda = ctx["device"] == "cuda"
    lines = ["What a step costs the host (batch 1, eager; the same run): on a GPU every op of a step this small is "
             "a launch the host pays for, so this is the launch-bound regime's cost, measurable on any machine.", "",
             "| model | geometry | mask | backend | host ms/step at batch 1 | ops dispatched/step | "
             "custom-op calls/step |"
             + (" kernels/step | launch calls/step |" if cuda else ""),
             "|---|---|---|---|---:|---:|---:|" + ("---:|---:|" if cuda else "")]
    for r in rows:
        if "host_ms_b1" not in r:
            lines.append(f"| {r['size']} | {r['geometry']} | {r['mask_ratio']:g} | {r['backend']} | "
                         f"failed: {r.get('error', '?')[:60]} | | |" + (" | |" if cuda else ""))
            continue
        lines.append(f"| {r['size']} | {r['geometry']} | {r['mask_ratio']:g} | {r['backend']} | "
                     f"{r['host_ms_b1']:.1f} | "
                     f"{_num(r.get('ops_per_step'))} | {_num(r.get('custom_ops_per_step'))} |"
                     + (f" {_num(r.get('kernels_per_step'))} | {_num(r.get('launch_calls_per_step'))} |"
                        if cuda else ""))
    return "\n".join(lines) + "\n"


def grid_markdown(results: list[dict], ctx: dict, host_rows=()) -> str:
    """The grid table (scaling-sweep rows left out), the host-cost table and the kept-fraction fits."""
    md = markdown([r for r in results if not r.get("sweep")], ctx)
    if host_rows:
        md += "\n" + host_cost_markdown(list(host_rows), ctx)
    return md + "\n" + fits_markdown(scaling_fits(results), "Step time against the kept fraction (sparse backends):")


# -- plots ----------------------------------------------------------------------------------------
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


# -- comparisons and fits --------------------------------------------------------------------------
def compare(new: list[dict], old_path: str) -> str:
    with open(old_path) as f:
        old_doc = json.load(f)
    old = {_case_key(r): r for r in old_doc["results"] if "ms_step" in r}
    lines = [f"Compared with {old_path} (git {old_doc['context'].get('git')}, {old_doc['context'].get('date')}, "
             f"{old_doc['context'].get('gpu') or old_doc['context'].get('cpu')})", "",
             "| case | old ms/step | new ms/step | new/old time |", "|---|---:|---:|---:|"]
    matched = 0
    for r in new:
        k = _case_key(r)
        if k in old and "ms_step" in r:
            matched += 1
            o = old[k]
            lines.append(f"| {Case(*k).label()} | {o['ms_step']:.1f} | {r['ms_step']:.1f} | "
                         f"{r['ms_step'] / o['ms_step']:.2f} |")
    if not matched:
        lines.append("| (no case in common) | | | |")
    return "\n".join(lines) + "\n"


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
    """For each backend but the baselines (the sparse ones) and group: ms/step against kept fraction (slope = cost
    of the visible part; intercept = what does not shrink with masking: decoder, heads, losses, optimiser,
    overheads)."""
    fits = []
    ok = [r for r in results if "ms_step" in r and parse_backend(r["backend"]).kind not in BASELINES]
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
