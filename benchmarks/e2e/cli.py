"""The command line: the grid, host cost, sweeps, profiles, reports."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from dataclasses import asdict

from mmearth_kernels.models.registry import BACKEND_SPECS, default_backend, reference_backend
from mmearth_kernels.files import write_atomically
from mmearth_kernels.tasks import TASK_SETS

from .cases import GEOMETRIES, PRECISIONS, Case, available_backends, default_device, parse_backend, quick_grid, \
    why_unavailable
from .report import batch_width_fits, batch_width_markdown, compare, context, grid_markdown, plots, \
    ratios_to_baselines, scaling_fits
from .run import host_cost, run_case, run_isolated

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _list(s: str, conv=str) -> list:
    return [conv(v) for v in str(s).split(",") if v.strip()]


def build_parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.e2e", description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc.split("\n\n", 1)[1])
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--backends", help="comma-separated; 'all' = every backend available here (quick grid: "
                                       f"{quick_grid('cpu')['backends']} on CPU; graphed, eager and compiled-graphed "
                                       "on GPU); names: " + parse_backend.__doc__.split(": ", 1)[1].replace("``", ""))
    ap.add_argument("--sizes", help="ConvNeXt V2 sizes, e.g. atto,tiny,base")
    ap.add_argument("--geometries", help="image/patch: 56/8 and/or 112/16")
    ap.add_argument("--mask-ratios", help="e.g. 0,0.4,0.6,0.75")
    ap.add_argument("--precisions", help="fp32 and/or bf16 (autocast)")
    ap.add_argument("--batch", help="samples per step, one or a comma-separated list (quick grid: 32 CPU, "
                                    "256,1024 GPU)")
    ap.add_argument("--tasks", default="all", help="pretext tasks (all, s2, pixel, image)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per case (compilation happens here; "
                                                          "graphed cases add their eager steps and the capture)")
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per case (the median is reported)")
    ap.add_argument("--host-cost", action=argparse.BooleanOptionalAction, default=True,
                    help="also run each eager backend at batch 1: host ms/step and ops (launches) per step")
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


class UsageError(SystemExit):
    """A user's mistake: exit status 2 (argparse's), no traceback; ``str()`` is the message (for callers of main)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _fail(message: str):
    """One line naming the option on stderr, then exit 2."""
    print(f"python -m benchmarks.e2e: error: {message}", file=sys.stderr)
    raise UsageError(message)


def _check_args(args, device: str) -> tuple[list[str], list[str]]:
    """(backends to run, backends to list as skipped); exit 2 with the reason on a bad option, before any case runs."""
    from mmearth_kernels.models.convnextv2 import SIZES
    from mmearth_kernels.models.mpmae import check_mask_ratio

    have = available_backends(device)
    names = have if args.backends == "all" else _list(args.backends)
    run, skip = [], []
    for b in names:
        try:
            parse_backend(b)
        except ValueError as e:
            _fail(f"--backends: {e}")
        (run if b in have else skip).append(b)
    if not names:
        _fail(f"--backends: no backend given, got {args.backends!r}")
    for s in _list(args.sizes) or [None]:
        if s not in SIZES:
            _fail(f"--sizes: {s!r} is not one of {', '.join(SIZES)}")
    for g in _list(args.geometries) or [None]:
        if g not in GEOMETRIES:
            _fail(f"--geometries: {g!r} is not one of {', '.join(GEOMETRIES)}")
    for p in _list(args.precisions) or [None]:
        if p not in PRECISIONS:
            _fail(f"--precisions: {p!r} is not one of {', '.join(PRECISIONS)}")
    if args.tasks not in TASK_SETS:
        _fail(f"--tasks must be one of {', '.join(TASK_SETS)}, got {args.tasks!r}")
    try:
        ratios = _list(args.mask_ratios, float)
    except ValueError:
        _fail(f"--mask-ratios must be numbers in [0, 1), got {args.mask_ratios!r}")
    if not ratios or any(not 0 <= r < 1 for r in ratios):
        _fail(f"--mask-ratios must be numbers in [0, 1), got {args.mask_ratios!r}")
    for g in _list(args.geometries):  # the model's own rule: every case must keep a patch and have an objective
        img, patch = GEOMETRIES[g]
        for r in ratios:
            try:
                check_mask_ratio(r, img // patch, TASK_SETS[args.tasks])
            except ValueError as e:
                _fail(f"--mask-ratios {r} with --geometries {g} --tasks {args.tasks}: {e}")
    try:
        batches = _list(args.batch, int)
    except ValueError:
        _fail(f"--batch must be positive integers, got {args.batch!r}")
    if not batches or any(b < 1 for b in batches):
        _fail(f"--batch must be positive integers, got {args.batch!r}")
    for name, least in (("warmup", 0), ("repeats", 1), ("profile_steps", 1)):
        if getattr(args, name) < least:
            _fail(f"--{name.replace('_', '-')} must be an int >= {least}, got {getattr(args, name)}")
    _check_out(args.out)
    if args.compare and not os.path.isfile(args.compare):
        _fail(f"--compare: no file at {args.compare}")
    return run, skip


def _check_report(path: str) -> None:
    """--report: an e2e JSON of this script (its results and context), else exit 2 saying what it is."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        _fail(f"--report {path}: cannot read it as JSON ({getattr(e, 'strerror', None) or e})")
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list) or not isinstance(doc.get("context"),
                                                                                                   dict):
        _fail(f"--report {path}: not an e2e JSON of this script (no 'results' list and 'context' record)")


def _check_out(out: str) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        _fail(f"--out {out} is a file; it must be a folder (made if missing)")
    there = os.path.abspath(out)
    while not os.path.exists(there):
        there = os.path.dirname(there)
    if not os.path.isdir(there) or not os.access(there, os.W_OK | os.X_OK):
        _fail(f"--out {out}: cannot make or write a folder there ({there} is not a writable folder)")


def main(argv=None, doc: str = "") -> dict:
    args = build_parser(doc or __doc__ + "\n\n").parse_args(argv)
    if args.worker:  # one case for run_isolated: the result is the last stdout line
        job = json.loads(args.worker)
        print(json.dumps(run_case(Case(**job["case"]), job["device"], job["warmup"], job["repeats"], page_in=True)))
        return {}
    if args.report:
        _check_report(args.report)
        return write_report(args.report)
    import torch

    if args.device not in ("auto", "cpu", "cuda"):
        _fail(f"--device must be auto, cpu or cuda, got {args.device!r}")
    device = default_device() if args.device == "auto" else args.device
    if device == "cuda" and not torch.cuda.is_available():
        _fail("--device cuda: no CUDA device is visible")
    for k, v in quick_grid(device).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    backends, skipped = _check_args(args, device)
    if args.smoke:
        args.batch, args.warmup, args.repeats = "2", 1, 1
    if args.isolate is None:
        args.isolate = device == "cpu"
    run = run_isolated if args.isolate else run_case
    # the most decision-relevant first (a time limit keeps them): batch, then size, then the given backend order
    cases = [Case(b, s, g, m, p, n, args.tasks) for n in _list(args.batch, int) for s in _list(args.sizes)
             for g in _list(args.geometries) for p in _list(args.precisions) for m in _list(args.mask_ratios, float)
             for b in backends + skipped]
    os.makedirs(args.out, exist_ok=True)
    name = args.name or f"e2e-{device}-{datetime.date.today().isoformat()}" + ("-smoke" if args.smoke else "")
    stem = os.path.join(args.out, name)
    ctx = context(device, args)
    from tqdm import tqdm

    doc: dict = {"context": ctx}
    if args.profile:
        return _profile(args, device, [c for c in cases if c.backend in backends], stem, doc)

    results = []
    doc["results"] = results  # rewritten after every case: a killed run keeps what it measured
    bar = tqdm(cases, desc="e2e", unit="case", file=sys.stderr)
    for c in bar:
        bar.set_postfix_str(c.label())
        if c.backend in skipped:
            results.append({**asdict(c), "device": device, "skipped": why_unavailable(c.backend, device)})
            print(f"[e2e] {c.label()} skipped: {results[-1]['skipped']}", file=sys.stderr)
            continue
        try:
            results.append(run(c, device, args.warmup, args.repeats))
        except Exception as e:  # one backend failing (e.g. a compile error) must not lose the others
            results.append({**asdict(c), "device": device, "error": f"{type(e).__name__}: {e}"})
            print(f"[e2e] {c.label()} failed: {type(e).__name__}: {e}", file=sys.stderr)
        _write_json(stem + ".json", doc)
    if args.host_cost:
        doc["host_cost"] = host_cost_rows(args, device, backends)
    if args.scaling:
        results += scaling_sweeps(args, device, backends, run)
    ratios_to_baselines(results)
    doc["results"] = results
    doc["scaling"] = scaling_fits(results)
    md = grid_markdown(results, ctx, doc.get("host_cost", ()))
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
    failed = [r for r in results + doc.get("host_cost", []) if "error" in r]
    if failed:
        raise SystemExit(f"[e2e] {len(failed)} case(s) failed (see the table)")
    return doc


def host_cost_rows(args, device: str, backends: list[str]) -> list[dict]:
    """Batch 1, eager, in this process, for each eager backend of the selection (first size/geometry)."""
    eager = [b for b in backends if not parse_backend(b).compiled and not parse_backend(b).graphed]
    size, geom, prec = _list(args.sizes)[0], _list(args.geometries)[0], _list(args.precisions)[0]
    ratio = 0.6 if 0.6 in _list(args.mask_ratios, float) else _list(args.mask_ratios, float)[0]
    rows = []
    for b in eager:
        try:
            rows.append(host_cost(b, size, geom, ratio, prec, device, repeats=1 if args.smoke else 7))
        except Exception as e:
            rows.append({"backend": b, "size": size, "geometry": geom, "mask_ratio": ratio, "precision": prec,
                         "device": device, "error": f"{type(e).__name__}: {e}"})
    return rows


def _profile(args, device: str, cases: list[Case], stem: str, doc: dict) -> dict:
    from tqdm import tqdm

    from .profile import profile_case, profile_markdown

    doc["profiles"] = []
    for c in tqdm(cases, desc="profile", unit="case", file=sys.stderr):
        p = profile_case(c, device, 1 if args.smoke else args.profile_steps, args.warmup, stem)
        doc["profiles"].append(p)
        print(profile_markdown(p))
    with open(stem + "-profile.md", "w") as f:
        f.write("\n".join(profile_markdown(p) for p in doc["profiles"]))
    _write_json(stem + "-profile.json", doc)
    return doc


def write_report(path: str) -> dict:
    with open(path) as f:
        doc = json.load(f)
    results = doc["results"]
    ratios_to_baselines(results)
    stem = path[:-5] if path.endswith(".json") else path
    md = grid_markdown(results, doc["context"], doc.get("host_cost", ()))
    with open(stem + ".md", "w") as f:
        f.write(md)
    plots([r for r in results if not r.get("sweep")], doc["context"], stem)
    print(md)
    return doc


def scaling_sweeps(args, device: str, backends: list[str], run) -> list[dict]:
    """A kernel backend (the first selected, else the default) against the reference: kept fraction at the first
    size; batch size (x0.25, x0.5, x1) and width (atto, femto, pico, nano) at mask 0.6."""
    sparse = next((b for b in backends if BACKEND_SPECS[parse_backend(b).kind].kernels), default_backend())
    size, geom, prec = _list(args.sizes)[0], _list(args.geometries)[0], _list(args.precisions)[0]
    batch = _list(args.batch, int)[0]
    sweep = [Case(sparse, size, geom, m, prec, batch, args.tasks) for m in (0.0, 0.25, 0.4, 0.6, 0.75, 0.9)]
    batches = sorted({max(1, batch // 4), max(1, batch // 2), batch})
    sweep += [Case(b, size, geom, 0.6, prec, n, args.tasks) for n in batches for b in (sparse, reference_backend())]
    widths = ("atto", "femto", "pico", "nano") if not args.smoke else ("atto", "femto")
    sweep += [Case(b, w, geom, 0.6, prec, batch, args.tasks) for w in widths for b in (sparse, reference_backend())]
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


def _nan_to_none(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_nan_to_none(v) for v in o]
    return o


def _write_json(path: str, doc: dict) -> None:
    """Atomic (mmearth_kernels.files: a kill leaves no temporary behind); non-finite floats become null (strict JSON
    readers reject a bare NaN)."""
    text = json.dumps(_nan_to_none(doc), indent=1, default=str)
    write_atomically(path, lambda f: f.write(text.encode()))
