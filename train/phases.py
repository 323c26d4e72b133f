"""Named phases of a training step (data, forward, backward, optimiser, replay) for profilers.

A phase is an NVTX range on CUDA (Nsight Systems shows it on the host timeline) and a ``record_function`` range
while a torch profiler is recording (it appears in the Chrome trace and in ``ops.md``). Both are skipped while a
CUDA graph is being captured: a range emitted during capture is recorded once, at capture time, and not replayed
with the graph; a graphed step marks its replays instead. With no profiler and no GPU a phase costs one boolean
check.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def phase(name: str, cuda: bool = False):
    nvtx = cuda and not torch.cuda.is_current_stream_capturing()
    profiling = torch._C._autograd._profiler_enabled()
    if nvtx:
        torch.cuda.nvtx.range_push(name)
    try:
        if profiling:
            with torch.profiler.record_function(name):
                yield
        else:
            yield
    finally:
        if nvtx:
            torch.cuda.nvtx.range_pop()
