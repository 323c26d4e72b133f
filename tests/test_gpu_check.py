"""The GPU check's plan (benchmarks/gpu_check.py) on a CPU box: its caps fit the deadline, its first test invocation
is the must-run GPU tests, and every selection it makes names tests and benchmarks that exist. The whole script runs
in CI as a dry run (.ci/run); this file checks the plan's arithmetic and selections in seconds."""

import importlib.util
import os
import subprocess
import sys

import pytest

import benchmarks.gpu_check as gc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_caps_fit_the_deadline_with_time_to_pack():
    assert sum(p.cap_s for p in gc.PHASES) <= gc.DEADLINE_S <= 500
    assert [p.name for p in gc.PHASES][:3] == ["build", "env", "must"]


def _calls(monkeypatch, tmp_path, dry):
    calls = []
    monkeypatch.setattr(gc.Runner, "run", lambda self, phase, label, argv, box=None, env=None: calls.append(
        (phase, argv, box or gc.cap(phase))) or 0)
    monkeypatch.setattr(gc, "train_record", lambda *a: None)
    if dry:
        monkeypatch.setenv("MMEARTH_GPU_CHECK_DRY_RUN", "1")
    gc.run_all(str(tmp_path), "test-gpu", 0.0, dry)
    return calls


@pytest.mark.parametrize("dry", [False, True], ids=["gpu", "dry"])
def test_the_first_test_invocation_is_the_must_run_set(monkeypatch, tmp_path, dry):
    calls = _calls(monkeypatch, tmp_path, dry)
    pytest_calls = [(phase, argv) for phase, argv, _ in calls if "pytest" in argv]
    phase, argv = pytest_calls[0]
    assert phase == "must" and argv[-len(gc.must_run()):] == gc.must_run()
    assert [p for p, *_ in calls].index("must") < [p for p, *_ in calls].index("e2e")
    # the boxes a phase asks for beside its last command's (which takes what is left) stay inside its cap
    for p in gc.PHASES[1:]:
        boxes = [box for phase, _, box in calls if phase == p.name]
        assert sum(boxes[:-1]) < p.cap_s, (p.name, boxes)


def test_every_gpu_impl_of_every_op_has_a_must_run_conformance_case():
    from mmearth_kernels.ops.registry import OPS

    ids = gc.conformance_ids()
    for spec in OPS.values():
        for impl in spec.impls:
            if impl.kind in ("cuda", "triton"):
                assert any(f"[{spec.name}-{impl.label}-" in i for i in ids), (spec.name, impl.label)


def _collect(*args):
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    return proc.returncode, [line for line in proc.stdout.splitlines() if "::" in line]


def test_every_must_run_node_id_is_collected():
    rc, ids = _collect(*gc.must_run())
    assert rc == 0, ids
    for node in gc.must_run():
        assert any(i == node or i.startswith(node + "[") for i in ids), node


def _bench_conftest():
    spec = importlib.util.spec_from_file_location("bench_conftest", os.path.join(REPO, "benchmarks", "conftest.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_kernel_slice_selects_the_gpu_benchmarks_it_is_for():
    """The GPU kernel benchmarks are not collected here (no GPU): their ids come from the same grid and case ids,
    with each op's declared GPU kernels, and the slice's -k expression is evaluated on them as pytest does."""
    from _pytest.mark.expression import Expression

    from mmearth_kernels.ops.registry import OPS

    bc = _bench_conftest()
    expr = Expression.compile(f"cuda and {gc.KERNEL_SELECTION}")
    for spec in OPS.values():
        gpu = [i.label for i in spec.impls if i.fused and i.kind in ("cuda", "triton")]
        gpu += [b.name for b in spec.bench.baselines if b.when("cuda")]
        ids = [f"test_{spec.bench.name}[{bc.case_id(c)}]" for c in
               bc.kernel_cases(lambda d: gpu, spec.bench.width, spec.bench.modes, devices=["cuda"])]
        chosen = [i for i in ids if expr.evaluate(lambda sub, i=i: sub.lower() in i.lower())]
        assert chosen, f"the kernel slice selects no {spec.name} benchmark"
        assert all("bfloat16" in i and ("56px" in i or "28px" in i) and "-bwd-" not in i for i in chosen)
        assert {i.rsplit("-", 1)[-1].rstrip("]") for i in chosen} >= {g for g in gpu if "-" not in g}


def test_the_warm_compile_needs_the_cache_folder_and_says_so():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_CACHE_DIR"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.kernel_resources", "--warm-cache", "--arch", "sm_90a"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "TRITON_CACHE_DIR" in proc.stderr, proc.stderr
