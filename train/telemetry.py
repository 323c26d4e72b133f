"""Throughput and efficiency of the run, per logging window, read only where the loop waits anyway.

Every step the loop calls :meth:`Telemetry.step_done`: on CUDA a timing event recorded on the current stream
(no synchronisation: the host does not wait), on CPU a host timestamp (CPU work is synchronous, so it is the real
end of the step). At a logging point, after the loop's one synchronisation, :meth:`Telemetry.close_window` reads
the window and starts the next one (the torchtitan pattern: every metric describes one window):

* ``img_per_s``, ``patches_per_s``: images and visible patches (what the encoder processed), all processes
  together, over the window's wall time (host clock, from the end of the last logging point to this one);
* ``step_ms``, ``step_ms_p90``: median and 90th percentile of the window's step times (end of one step to the end
  of the next: on CUDA the device's clock, so idle gaps waiting for the host or for data are included);
* ``data_wait_pct``: share of the window the loop spent blocked on the next batch;
* ``tflops``, ``tflops_executed``: achieved TFLOP/s per device on the model's FLOPs (the sparse model at the
  run's mask ratio, the same for every backend: ``mmearth_kernels.models.flops``) and on what the backend
  executes; ``mfu_pct`` = tflops / the peak (``train.hardware``), None when the peak is unknown;
* ``peak_mem_gib`` (+ ``peak_reserved_gib`` on CUDA): the window's peak allocated memory of the CUDA caching
  allocator, or the process's peak resident set on CPU.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .hardware import Peak


def peak_rss_mib() -> float | None:
    """The process's peak resident set (Linux VmHWM) in MiB, or None where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident set (Linux: write 5 to /proc/self/clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Telemetry:
    """Per-window throughput, step times, data wait, achieved FLOP/s, MFU and memory (see the module docstring).

    Args:
        device: ``"cuda"`` or ``"cpu"``.
        images_per_step, patches_per_step: images and visible patches one optimiser step processes, all processes.
        flops_per_step, executed_flops_per_step: this process's model and executed FLOPs per optimiser step.
        peak: the MFU denominator.
    """

    def __init__(self, device: str, images_per_step: int, patches_per_step: int, flops_per_step: float,
                 executed_flops_per_step: float, peak: Peak):
        self.cuda = device == "cuda"
        self.images_per_step, self.patches_per_step = images_per_step, patches_per_step
        self.flops, self.executed, self.peak = flops_per_step, executed_flops_per_step, peak
        self.windows: list[dict] = []  # every closed window, for the run summary
        self.open_window(0.0)

    def _mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def open_window(self, wait_s: float) -> None:
        """Start a window now (``wait_s``: the loader's cumulative wait so far)."""
        self.t0, self.wait0 = time.perf_counter(), wait_s
        self.marks = [self._mark()]
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        else:
            reset_peak_rss()

    def step_done(self) -> None:
        self.marks.append(self._mark())

    def _step_ms(self) -> list[float]:
        m = self.marks
        if self.cuda:  # the loop synchronised before the logging point: every event has completed
            return [a.elapsed_time(b) for a, b in zip(m, m[1:])]
        return [1e3 * (b - a) for a, b in zip(m, m[1:])]

    def close_window(self, wait_s: float) -> dict:
        """The window's fields (call after the loop's synchronisation at a logging point); opens the next window."""
        wall = max(time.perf_counter() - self.t0, 1e-9)
        steps = len(self.marks) - 1
        ms = self._step_ms()
        data_s = wait_s - self.wait0
        tflops = self.flops * steps / wall / 1e12
        rec = {"img_per_s": self.images_per_step * steps / wall,
               "patches_per_s": self.patches_per_step * steps / wall,
               "step_ms": float(np.median(ms)) if ms else None,
               "step_ms_p90": float(np.percentile(ms, 90)) if ms else None,
               "data_wait_pct": 100 * data_s / wall,
               "tflops": tflops,
               "tflops_executed": self.executed * steps / wall / 1e12,
               "mfu_pct": 100 * tflops / self.peak.tflops if self.peak.tflops else None,
               "data_s": data_s, "compute_s": wall - data_s}
        if self.cuda:
            rec["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
            rec["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
        else:
            rss = peak_rss_mib()
            rec["peak_mem_gib"] = rss / 1024 if rss is not None else None
        self.windows.append({**rec, "steps": steps, "wall_s": wall})
        self.open_window(wait_s)
        return rec
