"""What the grid runs: cases, backend names, the quick grid per device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from mmearth_kernels.models.registry import BACKEND_SPECS, baseline_backends, default_backend
from mmearth_kernels.ops.registry import AUTO_ORDER, KINDS, OPS

GEOMETRIES = {"56/8": (56, 8), "112/16": (112, 16)}
PRECISIONS = ("fp32", "bf16")
# The decision of this project: the sparse backends against the dense baselines in the same execution mode (the
# backend registry says which are baselines).
BASELINES = tuple(baseline_backends())
MODES = ("-compiled", "-graphed")  # execution-mode suffixes, in this order


@dataclass(frozen=True)
class Case:
    backend: str
    size: str
    geometry: str
    mask_ratio: float
    precision: str
    batch: int
    tasks: str = "all"

    def label(self) -> str:
        return f"{self.backend} {self.size} {self.geometry} mask {self.mask_ratio:g} {self.precision} b{self.batch}"


class Backend(NamedTuple):
    kind: str       # the encoder backend (a name of the backend registry)
    impl: str       # kernel impl for a backend that runs this library's kernels ("auto" otherwise)
    compiled: bool  # torch.compile(model)
    graphed: bool   # the whole step replayed from CUDA graphs

    @property
    def mode(self) -> str:
        """The execution-mode suffix: '', '-compiled', '-graphed' or '-compiled-graphed'."""
        return ("-compiled" if self.compiled else "") + ("-graphed" if self.graphed else "")


def parse_backend(name: str) -> Backend:
    """``"<backend>-cuda-compiled-graphed"`` -> Backend(backend, "cuda", True, True): a registered backend, for one that
    runs this library's kernels optionally ``-<impl>``, then optionally ``-compiled`` and/or ``-graphed``."""
    base, graphed, compiled = name, False, False
    if base.endswith(MODES[1]):
        base, graphed = base[: -len(MODES[1])], True
    if base.endswith(MODES[0]):
        base, compiled = base[: -len(MODES[0])], True
    if base in BACKEND_SPECS:
        return Backend(base, "auto", compiled, graphed)
    kind, _, impl = base.rpartition("-")
    if kind not in BACKEND_SPECS or not BACKEND_SPECS[kind].kernels or impl not in KINDS:
        kernels = [s.name for s in BACKEND_SPECS.values() if s.kernels]
        raise ValueError(f"unknown backend {name!r}: use one of {', '.join(BACKEND_SPECS)}, or "
                         f"{' / '.join(kernels)} followed by -<impl> ({', '.join(KINDS)}), optionally followed by "
                         f"{' and/or '.join(MODES)}")
    return Backend(kind, impl, compiled, graphed)


def mode_baseline(backend: str, baseline: str) -> str:
    """The baseline in the same execution mode: sparse-cuda-graphed -> dense-graphed."""
    return baseline + parse_backend(backend).mode


def kernel_impls(device: str) -> list[str]:
    """The impls every op has on ``device`` here: a ``<backend>-<impl>`` runs each op with it."""
    return [k for k in KINDS if all(k in spec.available_impls(device) for spec in OPS.values())]


def available_backends(device: str) -> list[str]:
    """Every backend available on ``device`` (from the backend registry): each one that runs this library's kernels
    also with each impl, the default and the baselines also compiled, all of those also graphed on CUDA; the slow
    ones (correctness references) eager only, last."""
    specs = [s for s in BACKEND_SPECS.values() if s.why_unavailable(device) is None]
    eager = [n for s in specs if not s.slow
             for n in [s.name, *(f"{s.name}-{i}" for i in (kernel_impls(device) if s.kernels else ()))]]
    out = eager + [b + MODES[0] for b in eager if b in (default_backend(), *BASELINES)]
    if device == "cuda":  # CUDA graphs: the whole step, eager or compiled
        out += [b + MODES[1] for b in out]
    return out + [s.name for s in specs if s.slow]


def why_unavailable(name: str, device: str) -> str:
    b = parse_backend(name)
    if b.graphed and device != "cuda":
        return "CUDA graphs need a CUDA device"
    why = BACKEND_SPECS[b.kind].why_unavailable(device)
    return why if why else f"the {b.impl!r} kernels are not available on {device}"


def quick_grid(device: str) -> dict:
    """What runs with no grid option: the comparisons the README quotes, in minutes."""
    main = [default_backend(), *BASELINES]
    if device == "cuda":
        # bf16 (the trainer's GPU default) at batch 256 then 1024. The graphed steps come first: at these sizes an
        # eager step is bound by host launch overhead, so only graphed steps compare GPU work (the default backend
        # against every baseline in the same mode; also with the kernels auto does not pick, and the other kernel
        # backends), then eager, then compiled and graphed.
        auto = next(k for k in AUTO_ORDER[device] if k in kernel_impls(device))
        others = [f"{default_backend()}-{k}" for k in kernel_impls(device) if k not in ("ref", auto)]
        others += [s.name for s in BACKEND_SPECS.values() if s.kernels and not s.default and not s.slow]
        backends = [b + MODES[1] for b in main + others] + main + [b + "".join(MODES) for b in main]
        have = available_backends(device)
        return dict(backends=",".join(b for b in backends if b in have), sizes="atto,tiny",
                    geometries="56/8", mask_ratios="0.6", precisions="bf16", batch="256,1024")
    return dict(backends=",".join([*BASELINES, default_backend()]), sizes="atto", geometries="56/8",
                mask_ratios="0,0.4,0.6,0.75", precisions="fp32", batch="32")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
