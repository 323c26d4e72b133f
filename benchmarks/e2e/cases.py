"""What the grid runs: cases, backend names, the quick grid per device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from mmearth_kernels.ops import available_impls

GEOMETRIES = {"56/8": (56, 8), "112/16": (112, 16)}
PRECISIONS = ("fp32", "bf16")
KINDS = ("dense", "dense-plain", "sparse", "sparse-fused", "minkowski")
# The decision of this project: sparse against the dense baselines in the same execution mode.
BASELINES = ("dense", "dense-plain")


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
    kind: str       # encoder backend: dense, dense-plain, sparse, sparse-fused, minkowski
    impl: str       # kernel impl for sparse ("auto" otherwise)
    compiled: bool  # torch.compile(model)
    graphed: bool   # the whole step replayed from CUDA graphs

    @property
    def mode(self) -> str:
        """The execution-mode suffix: '', '-compiled', '-graphed' or '-compiled-graphed'."""
        return ("-compiled" if self.compiled else "") + ("-graphed" if self.graphed else "")


def parse_backend(name: str) -> Backend:
    """``"sparse-cuda-compiled-graphed"`` -> Backend("sparse", "cuda", True, True)."""
    base, graphed, compiled = name, False, False
    if base.endswith("-graphed"):
        base, graphed = base[: -len("-graphed")], True
    if base.endswith("-compiled"):
        base, compiled = base[: -len("-compiled")], True
    if base in ("dense", "dense-plain", "minkowski", "sparse", "sparse-fused"):
        return Backend(base, "auto", compiled, graphed)
    kind, _, impl = base.rpartition("-")
    if kind not in ("sparse", "sparse-fused") or impl not in ("ref", "cpu", "cuda", "triton"):
        raise ValueError(f"unknown backend {name!r}: use dense, dense-plain, sparse, sparse-<impl>, sparse-fused, "
                         "sparse-fused-<impl> or minkowski, optionally followed by -compiled and/or -graphed")
    return Backend(kind, impl, compiled, graphed)


def mode_baseline(backend: str, baseline: str) -> str:
    """The baseline in the same execution mode: sparse-cuda-graphed -> dense-graphed."""
    return baseline + parse_backend(backend).mode


def available_backends(device: str) -> list[str]:
    impls = [i for i in available_impls("sparse_dwconv2d", device) if i in available_impls("grn", device)]
    eager = ["dense", "dense-plain", "sparse", *(f"sparse-{i}" for i in impls), "sparse-fused",
             *(f"sparse-fused-{i}" for i in impls if i == "triton")]
    out = eager + [b + "-compiled" for b in eager if b in ("dense", "dense-plain", "sparse")]
    if device == "cuda":  # CUDA graphs: the whole step, eager or compiled
        out += [b + "-graphed" for b in out]
    try:
        import MinkowskiEngine  # noqa: F401

        out.append("minkowski")
    except ImportError:
        pass
    return out


def why_unavailable(name: str, device: str) -> str:
    b = parse_backend(name)
    if b.graphed and device != "cuda":
        return "CUDA graphs need a CUDA device"
    if b.kind == "minkowski":
        return "MinkowskiEngine is not installed (scripts/build_minkowski.sh)"
    return f"the {b.impl!r} kernels are not available on {device}"


def quick_grid(device: str) -> dict:
    """What runs with no grid option: the comparisons the README quotes, in minutes."""
    if device == "cuda":
        # bf16 (the trainer's GPU default) at batch 256 then 1024. The graphed steps come first: at
        # these sizes an eager step is bound by host launch overhead, so only graphed steps compare
        # GPU work (sparse against both dense baselines in the same mode). sparse = impl "auto".
        backends = ["sparse-graphed", "dense-graphed", "dense-plain-graphed", "sparse-cuda-graphed",
                    "sparse-fused-graphed",
                    "sparse", "dense", "dense-plain",
                    "sparse-compiled-graphed", "dense-compiled-graphed", "dense-plain-compiled-graphed"]
        have = available_backends(device)
        return dict(backends=",".join(b for b in backends if b in have), sizes="atto,tiny",
                    geometries="56/8", mask_ratios="0.6", precisions="bf16", batch="256,1024")
    return dict(backends="dense,dense-plain,sparse", sizes="atto", geometries="56/8", mask_ratios="0,0.4,0.6,0.75",
                precisions="fp32", batch="32")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
