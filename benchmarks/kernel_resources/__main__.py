"""python -m benchmarks.kernel_resources [--arch sm_90a --arch sm_80] [--check] [--out PATH]

Compiles, without a GPU, every Triton kernel of mmearth_kernels.triton_kernels x every autotune config x the
specialisations that training launches (dtypes, the integers Triton specialises on), and every CUDA kernel of
csrc/cuda/*.cu, for the given architectures; writes a JSON record (registers, spills, shared memory, compile
seconds, threads per block, an occupancy estimate per row). ``--check`` exits 1 if any row spills, fails to
compile, compiles over the stated limit or could not launch, printing which.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

from benchmarks import records
from mmearth_kernels.files import write_atomically

from . import compilers, discover, pool, record, scenarios

RESULTS = os.path.join(compilers.ROOT, "benchmarks", "results")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernel_resources", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", action="append", choices=sorted(scenarios.ARCHS),
                   help="GPU architecture to compile for (repeatable; default sm_90a)")
    p.add_argument("--dtypes", default=",".join(scenarios.DTYPES),
                   help=f"storage dtypes to launch with (default: all, {','.join(scenarios.DTYPES)})")
    p.add_argument("--models", default=",".join(scenarios.MODELS), help="model sizes whose stage shapes to launch")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel compile processes")
    p.add_argument("--timeout-s", type=float, default=600.0,
                   help="a compile still running after this is stopped and reported (default 600)")
    p.add_argument("--no-cuda", action="store_true", help="skip the CUDA kernels (no nvcc here)")
    p.add_argument("--out", help="the record to write (default: benchmarks/results/kernel_resources-<archs>-<date>"
                                 ".json)")
    p.add_argument("--check", action="store_true", help="exit 1 on any spill, failed compile or compile over the limit")
    p.add_argument("--cache", default=os.path.join(os.environ.get("MMEARTH_CACHE") or
                                                   os.path.expanduser("~/.cache/mmearth-kernels"), "kernel_resources"),
                   help="results of earlier compiles, keyed by everything that decides them (the kernel's source "
                        "and its callees', signature, constants, options, architecture, compiler versions); "
                        "default ${MMEARTH_CACHE:-~/.cache/mmearth-kernels}/kernel_resources")
    p.add_argument("--no-cache", action="store_true", help="compile everything, read and write no cache")
    p.add_argument("--warm-cache", action="store_true",
                   help="on a GPU machine, before measuring: compile every Triton launch for this GPU (or --arch) "
                        "into $TRITON_CACHE_DIR exactly as the launches will, so the measured runs find each kernel "
                        "there instead of compiling it (benchmarks/gpu_check.sh does this while the extension "
                        "builds); no record, no resources read")
    return p


def _choices(parser, text: str, allowed, what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items or any(s not in allowed for s in items):
        parser.error(f"--{what}: expected a comma-separated subset of {','.join(allowed)}, got {text!r}")  # exit 2
    return items


def _versions(with_cuda: bool) -> dict:
    import torch
    import triton
    from triton.backends.nvidia.compiler import get_ptxas_version

    def last_line(text):
        return text.strip().splitlines()[-1] if text.strip() else "unknown"

    out = {"torch": torch.__version__, "triton": triton.__version__,
           "ptxas (Triton's)": last_line(get_ptxas_version(90))}  # records.new_record adds python and cuda
    if with_cuda:
        out["nvcc"] = last_line(subprocess.run([compilers.nvcc_path(), "--version"], capture_output=True,
                                               text=True, timeout=60).stdout)
    return out


def _previous_seconds() -> dict:
    """Compile seconds per (kind, kernel, config) from the newest committed record: the longest jobs go first."""
    paths = sorted(glob.glob(os.path.join(RESULTS, "kernel_resources-*.json")), key=os.path.getmtime)
    if not paths:
        return {}
    out = {}
    for r in json.load(open(paths[-1])).get("results", []):
        key = (r["kind"], r.get("source", r["kernel"]), r.get("config"))
        out[key] = max(out.get(key, 0.0), r.get("compile_s", 0.0))
    return out


def _order(jobs: list) -> list:
    """Longest first (nvcc files, then Triton jobs by the last record's seconds): the slowest compile must not
    start last on an otherwise idle machine."""
    seen = _previous_seconds()

    def cost(job):
        if isinstance(job, compilers.CudaJob):
            return (1, seen.get(("cuda", job.source, None), 1e9))
        return (0, seen.get(("triton", job.kernel, job.config), 0.0))

    return sorted(jobs, key=cost, reverse=True)


def _cache_key(job, versions: dict) -> str:
    """What decides a job's numbers: the job's own key (source, signature, constants, options, architecture; for
    nvcc the file and headers) and the compilers' versions."""
    text = f"{job.key}-{sorted(versions.items())}"
    if isinstance(job, compilers.CudaJob):
        text += "-" + " ".join(compilers.nvcc_command(job.source, job.arch, "out"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _split_cached(jobs: list, cache: str | None, versions: dict):
    """(jobs to compile, {job index: cached rows})."""
    if not cache:
        return jobs, {}
    todo, hits = [], {}
    for i, job in enumerate(jobs):
        path = os.path.join(cache, _cache_key(job, versions) + ".json")
        try:
            hits[i] = json.load(open(path))
        except (OSError, ValueError):
            todo.append(job)
    return todo, hits


def _write_cache_entry(path: str, rows) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_atomically(path, lambda f: f.write((json.dumps(rows) + "\n").encode()))


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    archs = args.arch or ["sm_90a"]
    dtypes = _choices(parser, args.dtypes, list(scenarios.DTYPES), "dtypes")
    models = _choices(parser, args.models, list(scenarios.MODELS), "models")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if not args.timeout_s > 0:
        parser.error(f"--timeout-s must be > 0, got {args.timeout_s}")
    if args.out and os.path.isdir(args.out):
        parser.error(f"--out must be a file to write, but {args.out} is a folder")
    if args.warm_cache:
        return _warm(parser, args, dtypes, models)
    # compiled kernels land in a temporary Triton cache: this run must compile, and must not fill the user's cache
    triton_cache = tempfile.mkdtemp(prefix="kernel_resources_triton_")
    os.environ["TRITON_CACHE_DIR"] = triton_cache
    try:
        return _run(args, archs, dtypes, models, argv)
    finally:
        shutil.rmtree(triton_cache, ignore_errors=True)


def _warm(parser, args, dtypes, models) -> int:
    """--warm-cache: the Triton compiles of every captured launch into $TRITON_CACHE_DIR for the GPU here."""
    if not os.environ.get("TRITON_CACHE_DIR"):
        parser.error("--warm-cache fills $TRITON_CACHE_DIR, which is not set: set it to the folder the measured runs "
                     "will use")
    archs = args.arch
    if not archs:
        import torch

        if not torch.cuda.is_available():
            parser.error("--warm-cache: no GPU here to compile for; name one with --arch")
        cap = "%d%d" % torch.cuda.get_device_capability()
        archs = [a for a, c in scenarios.ARCHS.items() if str(c) == cap]
        if not archs:
            print(f"kernel_resources --warm-cache: compute capability {cap} is not among {', '.join(scenarios.ARCHS)}; "
                  "nothing compiled ahead (the runs compile on first use)")
            return 0
    jobs = scenarios.jobs(scenarios.launches(models, dtypes), archs)
    os.environ[compilers.WARM_ENV] = "1"  # read by the spawned workers
    failed = []

    def on_result(job, status, payload, seconds):
        if status != "ok":
            failed.append(f"{job.label}: {status} {(payload or '').splitlines()[0][:160] if payload else ''}")

    wall = pool.run_jobs(_order(jobs), args.workers, args.timeout_s, on_result)
    print(f"kernel_resources --warm-cache: {len(jobs) - len(failed)} of {len(jobs)} Triton compiles for "
          f"{','.join(archs)} in {wall:.0f} s into {os.environ['TRITON_CACHE_DIR']}"
          + "".join(f"\n  not compiled: {f}" for f in failed))
    return 0


def _run(args, archs, dtypes, models, argv) -> int:
    kernels = discover.kernels()
    launches = scenarios.launches(models, dtypes)
    missing = sorted(set(kernels) - {launch.kernel for launch in launches})
    if missing:
        print(f"error: no scenario launches {', '.join(missing)}: add its launcher to "
              f"benchmarks/kernel_resources/scenarios.py", file=sys.stderr)
        return 1
    jobs = scenarios.jobs(launches, archs)
    if not args.no_cuda:
        jobs += compilers.cuda_jobs(archs)
    n_triton = sum(isinstance(j, scenarios.TritonJob) for j in jobs)
    versions = _versions(not args.no_cuda)
    cache = None if args.no_cache else args.cache
    todo, hits = _split_cached(jobs, cache, versions)
    print(f"{len(kernels)} Triton kernels, {n_triton} Triton compiles ({len(launches)} launches captured), "
          f"{len(jobs) - n_triton} CUDA files; {len(hits)} from the cache ({cache}), {len(todo)} to compile on "
          f"{args.workers} workers, {','.join(archs)}", flush=True)

    rows = []
    done = [0]

    def rows_for(job, status, payload, seconds):
        rows_of = record.cuda_rows if isinstance(job, compilers.CudaJob) else record.triton_rows
        return rows_of(job, status, payload, seconds)

    for i, payload in hits.items():
        rows.extend({**r, "cached": True} for r in rows_for(jobs[i], "ok", payload, 0.0))

    def on_result(job, status, payload, seconds):
        done[0] += 1
        made = rows_for(job, status, payload, seconds)
        rows.extend(made)
        if status == "ok" and cache:  # failures and timeouts are not cached: they may be the machine's
            os.makedirs(cache, exist_ok=True)
            _write_cache_entry(os.path.join(cache, _cache_key(job, versions) + ".json"), payload)
        worst = max(made, key=lambda r: r.get("spill_stores", 0) + r.get("spill_loads", 0))
        note = (f"{worst.get('registers')} regs, spills {worst.get('spill_stores')}/{worst.get('spill_loads')} B"
                if status == "ok" else payload.splitlines()[0][:160] if payload else "")
        print(f"[{done[0]}/{len(todo)}] {status:7s} {seconds:6.1f} s  {job.label}: {note}", flush=True)

    wall = pool.run_jobs(_order(todo), args.workers, args.timeout_s, on_result) if todo else 0.0
    rows.sort(key=lambda r: (r["kind"], r["kernel"], r.get("config") or "", r.get("dtype", ""), r["arch"]))
    command = "python -m benchmarks.kernel_resources " + " ".join(argv if argv is not None else sys.argv[1:])
    rec = records.new_record("kernel_resources", f"compile-only {', '.join(archs)} (no GPU)", command.strip(), rows,
                             notes="registers, spills and shared memory from ptxas -v; occupancy is an estimate "
                                   "(benchmarks/kernel_resources/ptxas.py); compile_s is one process's wall time "
                                   "when the row was compiled (a cached row keeps it), on a machine shared with "
                                   "other work", versions=versions)
    rec.update({
        "scope": {"models": models, "dtypes": dtypes, "archs": archs, "batch": scenarios.BATCH,
                  "kernels": sorted(kernels), "cuda_sources": sorted({j.source for j in jobs
                                                                      if isinstance(j, compilers.CudaJob)})},
        "workers": args.workers, "wall_s": round(wall, 1), "compiled": len(todo), "from_cache": len(hits),
        "limits": {**record.LIMITS, "timeout_s": args.timeout_s},
    })
    out = args.out or os.path.join(RESULTS, f"kernel_resources-{'-'.join(a.replace('_', '') for a in archs)}-"
                                            f"{rec['date'][:10]}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    records.write_record(out, rec)
    print(f"{len(rows)} rows in {wall:.0f} s -> {out}")
    if args.check:
        bad = record.violations(rec)
        for line in bad:
            print(f"FAIL {line}")
        print(f"kernel_resources --check: {len(bad)} problem(s) in {len(rows)} rows" if bad else
              f"kernel_resources --check: OK ({len(rows)} rows: no spill, every compile within its limit)")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
