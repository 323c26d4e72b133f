"""What a step costs the host, counted rather than timed.

* Any device: the operations a step dispatches (a dispatch mode sees every aten op after autograd and
  every custom-op call). On a GPU each of those is a kernel launch or more.
* CUDA: a profiler trace of one step: kernels the GPU ran, the launch calls the host made (kernel
  launches, memcpy/memset, graph launches), and the summed kernel time against the step's wall time.
"""

from __future__ import annotations

import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

LAUNCH_CALLS = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC", "cudaGraphLaunch",
                "cudaMemcpyAsync", "cudaMemsetAsync", "cudaLaunchCooperativeKernel")


# Dispatched, but no device work: allocation without a fill, and bookkeeping.
_NO_DEVICE_WORK = {"aten.empty", "aten.empty_strided", "aten.empty_like", "aten.new_empty", "aten.new_empty_strided",
                   "aten.lift_fresh", "aten.is_pinned", "aten.record_stream", "aten.set_"}


class OpCounter(TorchDispatchMode):
    """All ops dispatched; those that do device work (every op but views and bare allocations: on a GPU,
    a kernel launch or more each); and custom-op calls (this library's kernels)."""

    def __init__(self):
        super().__init__()
        self.ops = self.device_ops = self.custom = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if not func.is_view and func._overloadpacket._qualified_op_name.replace("::", ".") not in _NO_DEVICE_WORK:
            self.device_ops += 1
        if func.namespace == "mmearth_kernels":
            self.custom += 1
        return func(*args, **(kwargs or {}))


def count_ops(step) -> dict:
    """Ops dispatched by one call of ``step`` (its optimiser step included)."""
    with OpCounter() as c:
        step()
    return {"ops_per_step": c.ops, "device_ops_per_step": c.device_ops, "custom_ops_per_step": c.custom}


def profile_launches(step) -> dict:
    """One CUDA step under the profiler: kernels, host launch calls, summed kernel ms, wall ms."""
    from torch.profiler import ProfilerActivity, profile

    out = count_ops(step)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - t
    kernels = launches = 0
    kernel_us = 0.0
    for e in prof.events():
        if str(getattr(e, "device_type", "")).endswith("CUDA"):  # GPU work: kernels, memcpy, memset
            kernels += 1
            kernel_us += e.time_range.elapsed_us()
        elif e.name in LAUNCH_CALLS:
            launches += 1
    out.update(kernels_per_step=kernels, launch_calls_per_step=launches, kernel_ms_per_step=kernel_us / 1e3,
               profiled_wall_ms_per_step=wall * 1e3)
    return out
