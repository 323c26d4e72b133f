"""The single entry point for Triton: availability, the interpreter flag, autotune configs.

Triton kernels run on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (tests only:
about 0.5 ms per program instance). The flag must be in the environment *before* triton is
imported, so it is read once, here.
"""

from __future__ import annotations

import contextlib
import functools
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


MAX_REGISTERS = 255  # per thread: the hardware's limit


def config(num_warps: int, **blocks):
    """An autotune config with an explicit register budget of the hardware's 255 per thread. Without one, ptxas
    spills a few bytes in some of our kernels to fit one more block per SM (benchmarks/kernel_resources found 4 to
    24 byte spills at 64 to 128 registers); the spill traffic costs more than that block brings."""
    import triton

    return triton.Config(blocks, num_warps=num_warps, maxnreg=MAX_REGISTERS)


def fp64_configs(first_arg: str, configs: list) -> dict:
    """``prune_configs_by`` for an autotuned kernel whose fp64 launches need fewer values per thread: fp64 values take
    two registers each, and the fp32 tiles spill there (benchmarks/kernel_resources). Launches whose ``first_arg``
    tensor is fp64 autotune over ``configs`` instead of the kernel's own list."""
    configs = autotune_configs(configs)

    def prune(own, named_args, **kwargs):
        return configs if named_args[first_arg].dtype == torch.float64 else own

    return {"early_config_prune": prune}


def autotune_configs(configs: list) -> list:
    """Under the interpreter keep only the first config: more than one crashes there (no GPU to
    benchmark on). The first config is the largest block, so no masking bug hides behind it."""
    return configs[:1] if INTERPRET else configs


def acc_dtype(dtype: torch.dtype):
    """Triton accumulation dtype for a storage dtype: fp64 for fp64, fp32 otherwise."""
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def device_of(t: torch.Tensor):
    """The device guard of ``t``'s device: ``torch.cuda.device`` for a CUDA tensor, nothing for a CPU one (the
    interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def on_input_device(launcher):
    """Run a host launcher under the device guard of its first argument (a tensor). A Triton launch goes to the
    *current* CUDA device and its current stream, which need not be the tensor's: a tensor on cuda:1 while cuda:0
    is current would be read by a kernel on the wrong GPU. ``device_of`` is looked up per call (tests replace it)."""

    @functools.wraps(launcher)
    def guarded(first, *args, **kwargs):
        with device_of(first):
            return launcher(first, *args, **kwargs)

    return guarded
