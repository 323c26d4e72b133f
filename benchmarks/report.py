"""Markdown tables from a pytest-benchmark JSON file: median ms per impl, side by side, the speed-up
of each compiled impl over the baseline measured in the same run, and effective GB/s (ideal bytes
of the sparse problem / time; with --copy-gbs also % of a measured copy bandwidth).

    python benchmarks/report.py results.json [more.json ...] [--copy-gbs 2900] [--env env.json]
"""

import argparse
import json
import sys
from collections import defaultdict

from mmearth_kernels.models.registry import default_backend, reference_backend
from mmearth_kernels.ops.registry import OPS
from train.data.cli import ArgumentParser

# from the op table: each op's baseline row, and the impls that are our own kernels (the others are baselines)
BASELINE = {name: spec.bench.reference_baseline for name, spec in OPS.items()}
KERNEL_IMPLS = tuple(dict.fromkeys(i.label for spec in OPS.values() for i in spec.impls if i.fused))
LOADER = []  # (source, samples/s, tiles) from bench_loader.py
LOADER_WORKERS = []  # (workers, normalised in the worker, samples/s) from bench_loader.py
DISPATCH = defaultdict(dict)  # grad -> path -> median us, from bench_dispatch.py
ENCODER = defaultdict(dict)  # (device, model, batch) -> backend -> median s, from bench_encoder.py


def load(paths):
    rows = defaultdict(dict)  # (op, device, dtype, model, res, C, mode) -> impl -> (median s, bytes)
    first = None
    for path in paths:
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            print(f"report: error: cannot read pytest-benchmark JSON {path}: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        for b in data.get("benchmarks", []):
            if not b.get("stats"):  # --benchmark-disable runs record no timings
                continue
            e = b["extra_info"]
            if e.get("kind") == "encoder":
                ENCODER[(e["device"], e["model"], e["batch"])][e["backend"]] = b["stats"]["median"]
                first = first or b
                continue
            if e.get("kind") == "loader":
                LOADER.append((e["source"], e["samples"] / b["stats"]["median"], e["tiles"]))
                first = first or b
                continue
            if e.get("kind") == "loader-workers":
                LOADER_WORKERS.append((e["workers"], e["normalize"], e["samples"] / b["stats"]["median"]))
                first = first or b
                continue
            if e.get("kind") == "dispatch":
                DISPATCH[e["grad"]][e["path"]] = b["stats"]["median"] * 1e6
                first = first or b
                continue
            key = (e["op"], e["device"], e["dtype"], e["model"], e["res"], e["C"], e["mode"])
            rows[key][e["impl"]] = (b["stats"]["median"], e["bytes"])
            first = first or b
    return first, rows


def table(rows, op, copy_gbs=None):
    keys = sorted((k for k in rows if k[0] == op), key=lambda k: (k[1], k[2], k[3], -k[4], k[6]))
    if not keys:
        return ""
    impls = sorted({i for k in keys for i in rows[k]}, key=lambda i: (i not in KERNEL_IMPLS, i))
    base = BASELINE[op]
    kern = [i for i in impls if i in KERNEL_IMPLS]
    head = ["device", "dtype", "model", "shape", "mode"] + [f"{i} ms" for i in impls]
    head += [f"{i} vs {base}" for i in kern] + [f"{i} GB/s" for i in kern]
    if copy_gbs:
        head += [f"{i} % copy" for i in kern]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in keys:
        r = rows[k]
        cells = [k[1], k[2], k[3], f"{k[4]}px C{k[5]}", k[6]]
        cells += [f"{r[i][0] * 1e3:.3f}" if i in r else "" for i in impls]
        cells += [f"**{r[base][0] / r[i][0]:.2f}x**" if i in r and base in r else "" for i in kern]
        gbs = {i: r[i][1] / r[i][0] / 1e9 for i in kern if i in r}
        cells += [f"{gbs[i]:.1f}" if i in gbs else "" for i in kern]
        if copy_gbs:
            cells += [f"{100 * gbs[i] / copy_gbs:.0f} %" if i in gbs else "" for i in kern]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="+", help="pytest-benchmark output files (--benchmark-json)")
    ap.add_argument("--copy-gbs", type=float, default=None, help="measured copy bandwidth, for the %% column")
    ap.add_argument("--env", default=None, help="env.json from gpu_env.py, printed as the header")
    args = ap.parse_args()
    first, rows = load(args.json)
    if first is None:
        print("No timings in the input (smoke run with --benchmark-disable?).")
        return
    e = first["extra_info"]
    print(f"GPU: {e.get('gpu') or 'none'}; torch {e.get('torch')}; CUDA {e.get('cuda')}; git {e.get('git')}; "
          f"batch {e.get('batch')}; copy bandwidth {args.copy_gbs or 'not measured'} GB/s")
    if args.env:
        with open(args.env) as f:
            print(f"Environment: {json.load(f)}")
    print()
    for op in BASELINE:
        t = table(rows, op, args.copy_gbs)
        if t:
            print(f"### {op}\n\n{t}\n")
    if ENCODER:
        ref, ours = reference_backend(), default_backend()
        print(f"### encoder fwd+bwd (56/8, 61.2 % masked, fp32)\n\n| device | model | batch | {ref} ms | {ours} ms | "
              f"{ours} vs {ref} |\n|---|---|---|---|---|---|")
        for (dev, model, batch), r in sorted(ENCODER.items()):
            if ref in r and ours in r:
                print(f"| {dev} | {model} | {batch} | {r[ref] * 1e3:.1f} | {r[ours] * 1e3:.1f} | "
                      f"**{r[ref] / r[ours]:.2f}x** |")
        print()
    if LOADER:
        print("### loader (one worker, one torch thread)\n\n| source | samples/s |\n|---|---|")
        for source, rate, _ in LOADER:
            print(f"| {source} | {rate:.0f} |")
        print()
    if LOADER_WORKERS:
        print("### loader, DataLoader workers, from the cache\n\n| workers | batch normalised | samples/s | "
              "per worker |\n|---|---|---:|---:|")
        for w, norm, rate in sorted(LOADER_WORKERS):
            print(f"| {w} | {'in the worker' if norm else 'no (raw, for the GPU)'} | {rate:.0f} | {rate / w:.0f} |")
        print()
    if DISPATCH:
        paths = ["aten_add", "raw_op", "public", "custom_op", "define_impl"]
        print("### host cost per call, tiny size (median us)\n\n| | " + " | ".join(paths) + " |\n|---|"
              + "---:|" * len(paths))
        for grad in sorted(DISPATCH):
            print(f"| {'forward + backward' if grad else 'forward'} | "
                  + " | ".join(f"{DISPATCH[grad].get(p, float('nan')):.1f}" for p in paths) + " |")


if __name__ == "__main__":
    main()
