"""Where a step's time goes: torch.profiler on chosen optimiser steps of the user's own run, and the op table.

:class:`StepProfiler` (``--profile-steps A:B``) records optimiser steps A..B (1-based, as the metrics count them;
one warm-up step before A when there is one, so the first recorded step is not distorted) and writes to
``OUT/profile/``:

* ``trace.json.gz``: the Chrome / Perfetto trace, with ``distributedInfo {"rank": r}`` so Holistic Trace Analysis
  loads a single-process trace too, and the run's metadata;
* ``ops.md`` (and ``ops.json``): time per step by category (:func:`op_table`), with achieved GB/s where this
  library's op registry knows the bytes an op moves, and the top ops;
* with ``memory=True``: on CUDA ``memory_snapshot.pickle`` (drag onto https://pytorch.org/memory_viz), on CPU the
  profiler's memory events in the trace.

The same :func:`op_table` makes the end-to-end benchmark's ``--profile`` tables (``benchmarks/e2e/profile.py``).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, schedule

from .files import TempDir, write_atomically

# train/phases.py's ranges: the self time of "data" is the host reading the next batch, of the others host Python
PHASES = ("data", "forward", "backward", "optimiser", "replay")

HOST = "host: Python between ops"
OTHER = "other (elementwise, reductions, autograd)"
IDLE = "GPU idle (waiting for the host or data)"
DATA = "data loading (the loop waiting for the next batch)"

# (category, regex on the lower-cased op name); the first match wins. This library's ops are categorised by
# the op registry (each op declares its category); these rules sort aten ops and kernels.
_RULES = (
    (OTHER, r"^generatedbackwardfor|^autograd::"),  # autograd's own wrappers
    ("LayerNorm", r"layer_norm"),
    ("optimiser", r"adam|_foreach_|fused_sgd"),
    ("matmul", r"(^|::|_)(mm|addmm|bmm|baddbmm|matmul|linear)($|_)|gemm|cublas|cutlass|sm\d+_xmma|nvjet"),
    ("convolution (dense)", r"conv|cudnn"),
    ("data / copies / gathers", r"copy|_to_copy|::to$|contiguous|clone|cat$|stack|pin_memory|index|gather|scatter|"
                                r"take|masked_select|nonzero|argsort|sort|memcpy|memset"),
)


def _our_ops() -> dict:
    """qualified op name -> (op spec, "fwd"/"bwd") from the op registry (every impl's op, forward and backward)."""
    from mmearth_kernels.ops.registry import torch_op_index

    return torch_op_index()


def categorise(name: str, ours: dict | None = None) -> str:
    ours = _our_ops() if ours is None else ours
    hit = ours.get(name)
    if hit is not None:
        return hit[0].category
    if name == "data":
        return DATA
    if name in PHASES or name.startswith("ProfilerStep"):
        return HOST
    low = name.lower()
    for cat, pattern in _RULES:
        if re.search(pattern, low):
            return cat
    return OTHER


_ELEM = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2, "float32": 4, "bfloat16": 2, "float16": 2,
         "float64": 8}


def _bytes(evt, ours: dict) -> int:
    """Bytes one call of a registry op moved (its bytes-per-row model), from the recorded shape of its rows."""
    hit = ours.get(evt.name)
    shapes = getattr(evt, "input_shapes", None) or []
    dtypes = getattr(evt, "input_dtypes", None) or []
    if hit is None or not shapes or len(shapes[0]) != 2 or not dtypes:
        return 0
    spec, direction = hit
    rows, width = shapes[0]
    return int(rows * width * _ELEM.get(dtypes[0], 0) * spec.bytes[direction])


def op_table(prof, steps: int, cuda: bool) -> dict:
    """Per-step time by category, top ops and achieved GB/s of the registry's ops, from a finished profile.

    CPU: self CPU time of every event in the recorded steps; the self time of the step and phase ranges is the
    host's own Python time, so the categories add up to the step. CUDA: the device time of the kernels each op
    launched; what is left of the step's wall time is GPU idle time."""
    ours = _our_ops()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    step_us, cats, gb = 0.0, defaultdict(float), defaultdict(float)
    ops: dict[str, dict] = {}
    for e in prof.events():
        if e.name.startswith("ProfilerStep"):  # "ProfilerStep#5", or "ProfilerStep*" in newer torch
            step_us += e.cpu_time_total
        t = getattr(e, attr, 0.0)
        if t <= 0:
            continue
        cat = categorise(e.name, ours)
        cats[cat] += t
        gb[cat] += _bytes(e, ours)
        o = ops.setdefault(e.name, {"name": e.name, "category": cat, "us": 0.0, "calls": 0})
        o["us"] += t
        o["calls"] += 1
    step_ms = step_us / steps / 1e3
    if cuda:  # kernels do not fill the step: the rest is the GPU waiting
        cats[IDLE] = max(0.0, step_us - sum(cats.values()))
    per_step = {k: v / steps / 1e3 for k, v in sorted(cats.items(), key=lambda kv: -kv[1])}
    return {"steps": steps, "device": "cuda" if cuda else "cpu", "step_ms": step_ms, "categories": per_step,
            "gb_per_s": {k: gb[k] / (cats[k] / 1e6) / 1e9 for k in gb if gb[k] and cats[k]},
            "top_ops": [{**o, "ms": o["us"] / steps / 1e3, "calls": o["calls"] // steps}
                        for o in sorted(ops.values(), key=lambda o: -o["us"])[:25]]}


def op_table_markdown(t: dict, title: str = "") -> str:
    step = t["step_ms"] or 1e-9
    total = sum(t["categories"].values())
    time_of = "device time of the kernels each op launched" if t["device"] == "cuda" else "self CPU time"
    lines = ([f"# {title}", ""] if title else []) + [
        f"{t['steps']} profiled step(s), {t['step_ms']:.1f} ms per step (profiled: slower than unprofiled); "
        f"time by category is the {time_of}; the categories sum to {total:.1f} ms ({100 * total / step:.0f} % of "
        f"the step).", "",
        "| category | ms/step | % of step | achieved GB/s |", "|---|---:|---:|---:|"]
    for cat, ms in t["categories"].items():
        bw = t["gb_per_s"].get(cat)
        lines.append(f"| {cat} | {ms:.2f} | {100 * ms / step:.1f} | {f'{bw:.1f}' if bw else ''} |")
    lines += ["", "GB/s: bytes the op registry's model says each call moves (rows x C x bytes-per-row), over the "
              "category's time.", "", "| top ops (self time) | calls/step | ms/step | % of step | category |",
              "|---|---:|---:|---:|---|"]
    lines += [f"| `{o['name']}` | {o['calls']} | {o['ms']:.2f} | {100 * o['ms'] / step:.1f} | {o['category']} |"
              for o in t["top_ops"][:15]]
    return "\n".join(lines) + "\n"


def write_trace(prof, path: str, extra: dict) -> None:
    """The Chrome trace gzipped, with ``extra`` top-level keys. Metadata added with ``add_metadata_json`` only
    reaches the trace while the profiler records, and a schedule's trace is exported after it stopped; so the
    keys (HTA needs ``distributedInfo`` even for one process) are added to the exported JSON here."""
    with TempDir(path + ".raw") as tmp:  # never committed: removed on leaving, swept after a kill
        raw = os.path.join(tmp.path, "trace.json")
        prof.export_chrome_trace(raw)
        with open(raw) as f:
            trace = json.load(f)
    trace.update(extra)
    write_atomically(path, lambda f: f.write(gzip.compress(json.dumps(trace).encode(), compresslevel=5)))


def quiet_cpu_only_profiler() -> None:
    """Without a GPU, Kineto logs an ERROR (``gpuGetDeviceCount failed``) and other lines at every profile; they
    mean nothing there. Silenced on CPU-only machines unless the user set KINETO_LOG_LEVEL themselves."""
    if not torch.cuda.is_available():
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")


class StepProfiler:
    """torch.profiler over optimiser steps ``first``..``last`` of the run (see the module docstring). Call
    :meth:`step` after every optimiser step; the run goes on normally after ``last``."""

    def __init__(self, out: str, first: int, last: int, start_step: int, cuda: bool, rank: int = 0,
                 memory: bool = False, metadata: dict | None = None):
        self.folder, self.first, self.last, self.cuda, self.rank = out, first, last, cuda, rank
        self.memory, self.metadata = memory, metadata or {}
        self.done = last <= start_step  # a resumed run past the window records nothing
        self.result: dict | None = None
        if self.done:
            return
        begin = max(first, start_step + 1)
        warmup = 1 if begin - 1 > start_step else 0
        quiet_cpu_only_profiler()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self.prof = profile(activities=acts, record_shapes=True, profile_memory=memory and not cuda,
                            schedule=schedule(skip_first=begin - 1 - warmup - start_step, wait=0, warmup=warmup,
                                              active=last - begin + 1, repeat=1),
                            on_trace_ready=self._write)
        self.recorded = last - begin + 1
        self.prof.start()
        if memory and cuda:
            torch.cuda.memory._record_memory_history(max_entries=200_000)

    def step(self) -> None:
        if not self.done:
            self.prof.step()

    def _write(self, prof) -> None:
        os.makedirs(self.folder, exist_ok=True)
        write_trace(prof, os.path.join(self.folder, "trace.json.gz"),
                    {"distributedInfo": {"rank": self.rank},
                     "mmearth": {**self.metadata, "steps": [self.first, self.last]}})
        self.result = op_table(prof, self.recorded, self.cuda)
        with open(os.path.join(self.folder, "ops.json"), "w") as f:
            json.dump(self.result, f, indent=1)
        title = f"Optimiser steps {self.first}-{self.last}: where the time goes"
        with open(os.path.join(self.folder, "ops.md"), "w") as f:
            f.write(op_table_markdown(self.result, title))
        if self.memory and self.cuda:
            torch.cuda.memory._dump_snapshot(os.path.join(self.folder, "memory_snapshot.pickle"))
            torch.cuda.memory._record_memory_history(enabled=None)
        self.done = True
        top = ", ".join(f"{k} {v:.0f} ms" for k, v in list(self.result["categories"].items())[:4])
        print(f"[train] profile of steps {self.first}-{self.last} written to {self.folder}/ "
              f"({self.result['step_ms']:.0f} ms/step profiled: {top})", file=sys.stderr)

    def close(self) -> None:
        """Stop the profiler (a run that ends inside the window writes what it recorded)."""
        if getattr(self, "prof", None) is not None:
            self.prof.stop()
            self.prof = None
