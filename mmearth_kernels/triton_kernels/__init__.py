"""The single entry point for Triton: availability, the interpreter flag, autotune configs.

Triton kernels run on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (tests only:
about 0.5 ms per program instance). The flag must be in the environment *before* triton is
imported, so it is read once, here.
"""

from __future__ import annotations

import importlib.util
import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# Found, not imported: importing triton costs about a second, so the kernel modules import it
# lazily on first use (torch's CUDA wheels bring triton; CPU-only installs may not).
HAS_TRITON = importlib.util.find_spec("triton") is not None
IMPORT_ERROR = None if HAS_TRITON else "ModuleNotFoundError: No module named 'triton'"


def usable(device: torch.device | str) -> bool:
    """Whether Triton kernels can run on tensors of this device."""
    if not HAS_TRITON:
        return False
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available()
    return dev.type == "cpu" and INTERPRET


def why_not(device: torch.device | str) -> str:
    if not HAS_TRITON:
        return f"triton is not installed ({IMPORT_ERROR})"
    dev = torch.device(device)
    if dev.type == "cpu":
        return "Triton runs on CPU tensors only under TRITON_INTERPRET=1 (set before import; tests only)"
    return f"Triton cannot run on {dev}"


def autotune_configs(configs: list) -> list:
    """Under the interpreter keep only the first config: more than one crashes there (no GPU to
    benchmark on). The first config is the largest block, so no masking bug hides behind it."""
    return configs[:1] if INTERPRET else configs


def acc_dtype(dtype: torch.dtype):
    """Triton accumulation dtype for a storage dtype: fp64 for fp64, fp32 otherwise."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32
