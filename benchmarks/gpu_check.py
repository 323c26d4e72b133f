"""The GPU check's plan and its runner: what one lent GPU window measures, in which order, in how long.

``bash benchmarks/gpu_check.sh`` builds the extension (compiling every Triton kernel for the GPU in parallel
meanwhile), then runs ``python -m benchmarks.gpu_check run``: the phases below, each a subprocess in its own time
box, most owed first, so that a phase cut short keeps what it finished and the next still runs. The caps add up to
the deadline (500 s by default: a device call may last 600 s, and the results must still be packed)::

    python -m benchmarks.gpu_check plan            # the plan with its caps and selections (no GPU needed)
    python -m benchmarks.gpu_check run OUT_DIR     # what gpu_check.sh calls after the build
    MMEARTH_GPU_CHECK_DRY_RUN=1 bash benchmarks/gpu_check.sh   # the whole script on a CPU box, smoke sizes

Phases (``PHASES``):

1. ``build``: the extension, and the warm compile of every Triton kernel beside it (gpu_check.sh);
2. ``env``: device, versions, copy bandwidth (gpu_check.sh has checked that a C++ error reaches Python);
3. ``must``: the GPU tests a GPU run is for, by node id, in their own invocation: the CUDA-graph step equals the
   eager step, a planted sync gives a clear capture error, the graphed trainer resumes exactly, the step never
   waits for the device, and one conformance case of every op x GPU impl;
4. ``e2e``: the whole training step graphed against graphed (a trimmed grid: atto every graphed backend, tiny
   sparse against dense), bf16, batch 256;
5. ``kernels``: the kernel benchmark slice (bf16, batch 256, 56 and 28 px, forward and forward+backward);
6. ``train``: one short trainer run on the GPU with --cuda-graphs and --profile-steps (the numbers users see);
7. ``rest``: the other CUDA and Triton tests, for what time is left.

Everything a phase writes into OUT_DIR is a record ``python -m benchmarks.render`` reads unchanged.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 500


@dataclass(frozen=True)
class Phase:
    name: str
    cap_s: int
    what: str


PHASES = (
    Phase("build", 110, "build the extension for this GPU; warm-compile every Triton kernel meanwhile"),
    Phase("env", 20, "device, versions, copy bandwidth"),
    Phase("must", 90, "the must-run GPU tests, by node id"),
    Phase("e2e", 130, "graphed training step, trimmed grid (bf16, batch 256)"),
    Phase("kernels", 70, "kernel benchmark slice (bf16, batch 256, 56/28 px, fwd and fwd+bwd)"),
    Phase("train", 40, "a short trainer run: --cuda-graphs, --profile-steps, summary.json"),
    Phase("rest", 40, "the other CUDA and Triton tests"),
)
assert sum(p.cap_s for p in PHASES) <= DEADLINE_S, "the phase caps must fit the deadline"

# tests that a GPU run exists for (node ids; parametrised ids are derived from the tests' own lists at plan time)
MUST_TESTS = (
    "tests/test_step.py::test_cuda_graphs_replay_the_eager_step",
    "tests/test_step.py::test_a_sync_in_the_step_gives_a_clear_capture_error",
    "tests/test_step.py::test_cuda_graph_trainer_resumes_exactly",
    "tests/test_step.py::test_a_step_never_waits_for_the_device",
    "tests/test_step.py::test_the_trainer_loop_syncs_only_at_logging_points",
)
KERNEL_SELECTION = "bfloat16 and (-fwd- or fwdbwd) and (56px or 28px) and not -ref"


def conformance_ids() -> list[str]:
    """One conformance case (bf16 parity on a mask case with several blocks per patch) per op x GPU impl, from
    the op table: a new op or impl is in the must-run set by being declared."""
    from mmearth_kernels.ops.registry import OPS

    return [f"tests/test_op_conformance.py::test_parity[{spec.name}-{impl.label}-bf16-ratio0.75]"
            for spec in OPS.values() for impl in spec.impls if impl.kind in ("cuda", "triton")]


def e2e_grid(dry: bool) -> list[tuple[str, str]]:
    """(size, backends) of the e2e phase, from the backend registry: atto runs every backend of the GPU quick grid
    graphed (the default with each kernel impl, the other kernel backends, every baseline), tiny the kernel backends
    against the first baseline. A dry run takes the CPU quick grid's eager backends instead."""
    from mmearth_kernels.models.registry import BACKEND_SPECS, baseline_backends

    from .e2e.cases import MODES, quick_grid

    if dry:  # one size: the plumbing, in seconds
        return [("atto", quick_grid("cpu")["backends"])]
    graphed = MODES[1]
    kernels = [s.name for s in BACKEND_SPECS.values() if s.kernels and not s.slow]
    atto = [b for b in quick_grid("cuda")["backends"].split(",") if b.endswith(graphed) and b.count("-compiled") == 0]
    tiny = [b + graphed for b in [*kernels, baseline_backends()[0]]]
    return [("atto", ",".join(atto)), ("tiny", ",".join(tiny))]


def must_run() -> list[str]:
    return [*MUST_TESTS, *conformance_ids()]


def cap(name: str) -> int:
    return next(p.cap_s for p in PHASES if p.name == name)


def plan_text(dry: bool) -> str:
    lines = [f"gpu_check plan ({'DRY RUN: smoke sizes, CPU' if dry else 'GPU'}); deadline {DEADLINE_S} s, caps sum "
             f"to {sum(p.cap_s for p in PHASES)} s"]
    lines += [f"  {i + 1}. {p.name:<8} {p.cap_s:>4} s  {p.what}" for i, p in enumerate(PHASES)]
    lines.append("  must-run tests, in this order:")
    lines += [f"     {t}" for t in must_run()]
    return "\n".join(lines)


# -- running ----------------------------------------------------------------------------------------------------
class Runner:
    """Runs phase commands in time boxes inside one deadline, logging each to OUT/<phase>.log."""

    def __init__(self, out: str, start: float, dry: bool):
        self.out, self.start, self.dry = out, start, dry
        self.failed: list[str] = []
        self.spent: dict[str, float] = {}  # seconds each phase has used: its commands share its cap
        path = REPO + os.pathsep + os.environ.get("PYTHONPATH", "")
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=path)

    def left(self) -> float:
        return DEADLINE_S - (time.time() - self.start)

    def run(self, phase: str, label: str, argv: list[str], box: float | None = None, env: dict | None = None) -> int:
        """``argv`` in a box: ``box`` seconds if given, never more than what is left of the phase's cap and of the
        deadline."""
        t0 = time.time()
        box = max(1.0, min(box or cap(phase), cap(phase) - self.spent.get(phase, 0.0), self.left()))
        print(f"== [{time.time() - self.start:.0f} s] {phase}: {label} (box {box:.0f} s)", flush=True)
        log = os.path.join(self.out, f"{phase}.log")
        with open(log, "a") as f:
            f.write(f"$ {shlex.join(argv)}\n")
            f.flush()
            try:
                rc = subprocess.run(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                                    timeout=box).returncode
            except subprocess.TimeoutExpired:
                rc = 124
                f.write(f"\n[gpu_check] {label}: stopped at its {box:.0f} s box\n")
        with open(log) as f:
            tail = f.read().splitlines()[-4:]
        print("\n".join("   " + t for t in tail), flush=True)
        self.spent[phase] = self.spent.get(phase, 0.0) + time.time() - t0
        if rc != 0:
            self.failed.append(f"{phase}: {label} (rc {rc})")
        return rc


def _pytest(*args: str) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", "--durations=10", *args]


def run_all(out: str, name: str, start: float, dry: bool) -> int:
    r = Runner(out, start, dry)
    py = sys.executable
    smoke = ["--smoke", "--no-isolate", "--device", "cpu"] if dry else []
    # 2. env
    r.run("env", "device and versions", [py, "benchmarks/gpu_env.py", "--out", os.path.join(out, f"{name}-env.json")])
    # 3. the must-run GPU tests, by node id (on a CPU box they collect and skip, with their reasons)
    r.run("must", "CUDA-graph step, capture errors, resume, no-sync, one conformance case per op x impl",
          _pytest(*must_run()))
    # 4. the graphed e2e grid, one JSON record per size
    grid = e2e_grid(dry)
    for size, backends in grid:
        r.run("e2e", f"graphed step {size}", [py, "-m", "benchmarks.e2e", "--out", out, "--name",
              f"{name}-e2e-{size}", "--no-host-cost", "--sizes", size, "--geometries", "56/8", "--mask-ratios", "0.6",
              "--precisions", "bf16", "--batch", "256", "--backends", backends, *smoke], box=cap("e2e") / len(grid))
    # 5. kernel benchmarks (pytest-benchmark JSON, with the command recorded by benchmarks/conftest.py)
    sel = ["-k", "cpu and float32 and 7px and fwd-"] if dry else ["-k", f"cuda and {KERNEL_SELECTION}"]
    r.run("kernels", "kernel slice", _pytest("benchmarks/bench_kernels.py", *sel, "--benchmark-only",
          f"--benchmark-json={os.path.join(out, name + '-kernels.json')}"),
          env={"MMEARTH_BENCH_BATCH": "4", "MMEARTH_BENCH_ROUNDS": "1"} if dry else {"MMEARTH_BENCH_BATCH": "256"})
    # 6. the trainer on the GPU: what users see (summary.json, metrics, a profile of steps 5-8)
    run_dir = os.path.join(out, f"{name}-train")
    data = os.path.join(out, "train-data")
    r.run("train", "synthetic data", [py, "-m", "train.data.synthetic", data, "--tiles", "256", "--stem", "s256",
                                      "--gzip", "1"], box=10)
    r.run("train", "trainer run", [py, "-m", "train", "--data", os.path.join(data, "s256"), "--no-cache", "--steps",
                                   "12", "--log-every", "4", "--profile-steps", "5:8", "--batch-size",
                                   "8" if dry else "64", "--png-every", "0", "--out", run_dir, "--no-progress",
                                   *(["--device", "cpu", "--crop", "16", "--decoder-dim", "32"] if dry else
                                     ["--cuda-graphs"])])
    train_record(run_dir, os.path.join(out, f"{name}-train.json"))
    # 7. the rest of the GPU tests
    deselect = [a for t in must_run() for a in ("--deselect", t)]  # node-id prefixes: every parametrisation
    r.run("rest", "the other CUDA and Triton tests", _pytest("tests", "-m", "cuda or triton", *deselect))
    bad = unreadable_records(out)
    if bad:
        r.failed.append("records render cannot read: " + "; ".join(bad))
    print(f"== [{time.time() - start:.0f} s] done; " + ("all phases passed" if not r.failed else
                                                         "failed or cut short: " + "; ".join(r.failed)))
    return 1 if r.failed else 0


def train_record(run_dir: str, path: str) -> None:
    """The trainer run as a record (``benchmarks/record_run.py``: its windows, summary and profile table)."""
    from .record_run import RunError, run_record
    from .records import write_record

    try:
        write_record(path, run_record(run_dir))
    except RunError as e:  # the run did not finish: its log says why
        print(f"   no trainer record: {e}")


def unreadable_records(out: str) -> list[str]:
    """The JSON files of the run that ``benchmarks.records`` cannot read as records (render would refuse them)."""
    from .records import RecordError, read

    bad = []
    for f in sorted(os.listdir(out)):
        if f.endswith(".json"):
            try:
                read(os.path.join(out, f))
            except (RecordError, ValueError, OSError) as e:
                bad.append(f"{f}: {e}")
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("plan", help="print the plan")
    c = sub.add_parser("cap", help="print one phase's cap in seconds (for gpu_check.sh)")
    c.add_argument("phase", choices=[p.name for p in PHASES])
    r = sub.add_parser("run", help="run phases 2-7 into OUT_DIR")
    r.add_argument("out")
    r.add_argument("--name", required=True, help="file stem of the records (<gpu>-<date>)")
    r.add_argument("--start", type=float, default=None, help="the check's start (epoch seconds; default now)")
    args = ap.parse_args(argv)
    dry = os.environ.get("MMEARTH_GPU_CHECK_DRY_RUN") == "1"
    if args.cmd == "plan":
        print(plan_text(dry))
        return 0
    if args.cmd == "cap":
        print(cap(args.phase))
        return 0
    os.makedirs(args.out, exist_ok=True)
    print(plan_text(dry), flush=True)
    return run_all(os.path.abspath(args.out), args.name, args.start or time.time(), dry)


if __name__ == "__main__":
    sys.exit(main())
