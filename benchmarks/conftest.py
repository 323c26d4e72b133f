"""Shared fixtures for the kernel benchmarks (pytest-benchmark).

Every benchmark records its context in ``extra_info`` (device, versions, git sha) and the ideal
bytes of the *sparse* problem, so ``benchmarks/report.py`` can print effective GB/s and the
speed-up of each impl over the dense baseline measured in the same run.

Environment: ``MMEARTH_BENCH_BATCH`` (default 64) shrinks the batch for quick looks.
"""

import os
import platform
import shlex
import subprocess

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.testing import atto_stage_shapes, tiny_stage_shapes

BATCH = int(os.environ.get("MMEARTH_BENCH_BATCH", "64"))
# timed rounds per case (the median is reported): raise it on a noisy VM, where 7 rounds of a sub-ms op swing 30 %
ROUNDS = int(os.environ.get("MMEARTH_BENCH_ROUNDS", "7"))
MASK_RATIO = 0.6  # FCMAE: int(49 * 0.4) = 19 kept, 61.2 % masked
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = {"cpu": [torch.float32], "cuda": [torch.bfloat16, torch.float32]}


def kernel_cases(impls, width: int = 1, modes=("fwd", "bwd", "fwdbwd"), devices=None):
    """The kernel benchmarks' grid: (device, dtype, impl, model, res, C, mode) over every atto and tiny stage, with
    C = width x the stage's channels (4 for the MLP's hidden tensor); ``impls(device)`` lists the impls there.
    ``devices``: this machine's by default (the GPU check's plan asks for "cuda" on a CPU box)."""
    shapes = [(model, r, width * c) for model, stages in (("atto", atto_stage_shapes()), ("tiny", tiny_stage_shapes()))
              for r, c in stages]
    return [(dev, dt, impl, model, res, C, mode) for dev in (devices or DEVICES) for dt in DTYPES[dev]
            for impl in impls(dev) for model, res, C in shapes for mode in modes]


def case_id(case) -> str:
    dev, dt, impl, model, res, C, mode = case
    return f"{dev}-{str(dt)[6:]}-{model}-{res}px-C{C}-{mode}-{impl}"


def _git_sha():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(__file__), timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


CONTEXT = {
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "cpu": platform.processor() or platform.machine(),
    "threads": torch.get_num_threads(),
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "git": _git_sha(),
    "batch": BATCH,
    "mask_ratio": MASK_RATIO,
}


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """The command that made the file, as a record says it (benchmarks/records.py): pytest-benchmark keeps none."""
    env = " ".join(f"{k}={os.environ[k]}" for k in ("MMEARTH_BENCH_BATCH", "MMEARTH_BENCH_ROUNDS") if k in os.environ)
    output_json["record"] = {"command": f"{env} python -m pytest {shlex.join(config.invocation_params.args)}".strip()}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


@pytest.fixture
def timed(benchmark):
    """timed(fn, device, bytes_moved, setup=None): time fn (synchronised on CUDA) and record context."""

    def run(fn, device, bytes_moved, setup=None, **info):
        benchmark.extra_info.update(CONTEXT, device=device, bytes=bytes_moved, **info)

        def call(*args):
            out = fn(*args)
            sync(device)
            return out

        if setup is None:
            return benchmark.pedantic(call, rounds=ROUNDS, warmup_rounds=2, iterations=1)

        def wrapped_setup():
            args = setup()
            sync(device)
            return args, {}

        return benchmark.pedantic(call, setup=wrapped_setup, rounds=ROUNDS, warmup_rounds=2, iterations=1)

    return run


def time_mode(timed, mode, forward, grad, device, bytes_by_mode, **info):
    """Time one of "fwd" (forward), "bwd" (backward only; the forward runs untimed in setup) or
    "fwdbwd" (both), recording the ideal bytes of that mode."""
    info.update(mode=mode)
    if mode == "fwd":
        return timed(forward, device, bytes_by_mode["fwd"], **info)
    if mode == "fwdbwd":
        return timed(lambda: forward().backward(grad), device, bytes_by_mode["fwdbwd"], **info)
    return timed(lambda y: y.backward(grad), device, bytes_by_mode["bwd"], setup=lambda: (forward(),), **info)


def stage_layout(res, device, batch=BATCH, seed=0):
    mask = mk.random_patch_mask(batch, 7, MASK_RATIO, generator=torch.Generator().manual_seed(seed))
    return mk.build_layout(mask.to(device), res, mk.num_kept(49, MASK_RATIO))
