"""The ``impl=`` switch: which implementation of an op runs on which device.

* ``"ref"``    pure PyTorch (mmearth_kernels.reference); always available.
* ``"cpu"``    the C++ CPU kernel (CPU tensors).
* ``"cuda"``   the CUDA kernel (CUDA tensors).
* ``"triton"`` the Triton kernel (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``, for tests).
* ``"auto"``   the fastest available one for the device (below).
"""

from __future__ import annotations

import torch

from .. import _extension
from .. import triton_kernels as _triton

IMPLS = ("auto", "ref", "cpu", "cuda", "triton")

# Preference order per device type for impl="auto". CPU: the C++ kernels (Triton on CPU is the
# interpreter, for tests only). CUDA: Triton first until GPU measurements (benchmarks/gpu_check.sh)
# say otherwise; then this table is updated from benchmarks/results/.
AUTO_ORDER = {
    "cpu": ("cpu", "ref"),
    "cuda": ("triton", "cuda", "ref"),
}


# Ops whose impls are available where another op's kernels are (gelu_grn's CUDA impl: GELU + the GRN kernel;
# sparse_dwconv2d_ln's: the conv kernel + F.layer_norm).
KERNELS_OF = {"gelu_grn": "grn", "sparse_dwconv2d_ln": "sparse_dwconv2d"}


def available_impls(op: str, device: torch.device | str) -> list[str]:
    """Concrete implementations of ``op`` that can run on ``device`` in this installation."""
    dev = torch.device(device)
    op = KERNELS_OF.get(op, op)
    out = ["ref"]
    if dev.type == "cpu" and _extension.has_kernel(op, "CPU"):
        out.append("cpu")
    if dev.type == "cuda" and _extension.has_kernel(op, "CUDA"):
        out.append("cuda")
    if _triton.usable(dev):
        out.append("triton")
    return out


_RESOLVED: dict[tuple[str, str, str], str] = {}


def resolve(op: str, impl: str, device: torch.device) -> str:
    """The concrete impl to run, or a clear error saying why the requested one cannot. Remembered per
    (op, impl, device type): what is built and importable does not change in a process, and every op call
    asks (7 us of Python each time otherwise)."""
    key = (op, impl, device.type)
    hit = _RESOLVED.get(key)
    if hit is None:
        hit = _RESOLVED[key] = _resolve(op, impl, device)
    return hit


def _resolve(op: str, impl: str, device: torch.device) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        avail = available_impls(op, device)
        for cand in AUTO_ORDER.get(device.type, ("ref",)):
            if cand in avail:
                return cand
        return "ref"
    if impl == "ref":
        return impl
    if impl == "triton":
        if not _triton.usable(device):
            raise RuntimeError(f"{op}: impl='triton' cannot run here: {_triton.why_not(device)}")
        return impl
    _extension.require(f"{op}(impl={impl!r})")
    if device.type != impl:
        raise ValueError(f"{op}: impl={impl!r} runs on {impl} tensors, but the input is on {device}; "
                         f"use impl='auto' to pick per device")
    if not _extension.has_kernel(KERNELS_OF.get(op, op), impl.upper()):
        raise RuntimeError(f"{op}: impl={impl!r} is not in this build (mmearth_kernels._C was built without "
                           f"its {impl.upper()} kernels; see `python -m mmearth_kernels.info`)")
    return impl
