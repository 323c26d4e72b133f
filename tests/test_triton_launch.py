"""How the Triton kernels are launched (gpu-path-review.md items 11 and 12): every launch runs under the device guard
of its input tensor, and GRN's (group, part) programs sit on grid x, so a batch of more than 65,535 samples launches.

The launches are captured, not run (benchmarks/kernel_resources/scenarios.py): this holds on any machine."""

import contextlib

import pytest
import torch

triton = pytest.importorskip("triton", reason="needs triton (torch's CUDA wheels bring it)")

from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

import mmearth_kernels.triton_kernels as tk  # noqa: E402
from benchmarks.kernel_resources import discover, scenarios  # noqa: E402
from benchmarks.conftest import stage_layout  # noqa: E402

GRID_YZ_MAX = 65535


def test_every_launch_is_under_the_device_guard_of_its_input(monkeypatch):
    depth, guarded_on, launched = [0], [], []

    @contextlib.contextmanager
    def recording_guard(t):
        guarded_on.append(t.device)
        depth[0] += 1
        try:
            yield
        finally:
            depth[0] -= 1

    def jit_run(self, *args, grid, warmup, **kwargs):
        launched.append((discover.name_of(self), depth[0]))

    monkeypatch.setattr(tk, "device_of", recording_guard)
    monkeypatch.setattr(JITFunction, "run", jit_run)
    monkeypatch.setattr(Autotuner, "run", lambda self, *args, **kwargs: self.fn.run(*args, **kwargs))
    lay = stage_layout(14, "cpu", batch=2)
    scenarios.drive_stage(lay, 8, torch.float32, "guard", {})
    assert {name for name, _ in launched} == set(discover.kernels()), "a kernel was not reached"
    unguarded = sorted({name for name, d in launched if d != 1})
    assert not unguarded, f"launched outside the input's device guard: {unguarded}"
    assert guarded_on and all(d == torch.device("cpu") for d in guarded_on)


def test_the_guard_is_nothing_on_cpu_and_the_input_device_on_cuda():
    assert isinstance(tk.device_of(torch.zeros(1)), contextlib.nullcontext)
    if not torch.cuda.is_available():
        pytest.skip("the CUDA half needs a GPU (runs in the GPU session)")
    x = torch.zeros(1, device="cuda")
    with tk.device_of(x):
        assert torch.cuda.current_device() == x.device.index


@pytest.mark.parametrize("G, S, C", [(65536, 1, 40), (1_000_000, 3, 3072), (1, 9, 40), (256, 5, 160)])
def test_grn_grid_puts_groups_on_x(G, S, C):
    from mmearth_kernels.triton_kernels import grn

    for block_c in (64, 128, 256):
        x, y = grn.launch_grid(S, G, C, block_c)
        assert x == G * S and y == -(-C // block_c) and y <= GRID_YZ_MAX


def test_grn_grid_refuses_what_no_grid_holds():
    from mmearth_kernels.triton_kernels import grn

    with pytest.raises(ValueError, match="exceed the GPU grid limit"):
        grn.launch_grid(2, 2**30 + 1, 8, 64)
