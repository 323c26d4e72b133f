"""Loads the compiled extension ``mmearth_kernels._C`` and says clearly what is missing.

The package always imports: without the extension every op still runs with ``impl="ref"``
(pure PyTorch), and asking for a compiled impl raises an error that says how to build it.
"""

import logging

import torch

log = logging.getLogger("mmearth_kernels")

NAMESPACE = "mmearth_kernels"
BUILD_HINT = "build it with `pip install --no-build-isolation -e .` from the repository root (see README)"

try:
    from . import _C  # noqa: F401  (importing it runs the TORCH_LIBRARY registrations)

    LOADED = True
    LOAD_ERROR = None
except ImportError as e:  # not built, built for another torch, or MMEARTH_NO_EXT=1
    LOADED = False
    LOAD_ERROR = f"{type(e).__name__}: {e}"
    log.warning("mmearth_kernels._C is not available (%s); only impl='ref' will work. To fix: %s",
                LOAD_ERROR, BUILD_HINT)


def built_with_cuda() -> bool:
    """True when the extension was compiled with its CUDA sources."""
    return LOADED and bool(torch.ops.mmearth_kernels.built_with_cuda())


def cpu_threads_used() -> int:
    """Threads one ``at::parallel_for`` of the C++ CPU kernels runs on now (0 without the extension). Equal to
    ``torch.get_num_threads()`` in a build with OpenMP; 1 in one without (the kernels would then be serial)."""
    return int(torch.ops.mmearth_kernels.cpu_threads_used()) if LOADED else 0


def _dispatcher_has(op: str, key: str) -> bool:
    """The dispatcher's answer; False for an op this build does not define (an extension built from older
    sources, before the op existed: its ops then fall back to what the build has, instead of failing import)."""
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"{NAMESPACE}::{op}", key)
    except RuntimeError:
        return False


# Filled when each op is declared (ops.registry.register_op): the dispatcher query is not traceable by
# torch.compile, a dict lookup is.
_KERNELS: dict[tuple[str, str], bool] = {}


def query_kernels(ops, dispatch_key: str) -> None:
    """Ask the dispatcher once whether each of ``ops`` has a ``dispatch_key`` kernel in this build."""
    for op in ops:
        _KERNELS[(op, dispatch_key)] = LOADED and _dispatcher_has(op, dispatch_key)


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether the dispatcher has a kernel for ``mmearth_kernels::op`` under CPU/CUDA (ops the op table declares)."""
    return _KERNELS.get((op, dispatch_key), False)


def require(what: str) -> None:
    if not LOADED:
        raise RuntimeError(f"{what} needs the compiled extension mmearth_kernels._C, which is not available "
                           f"({LOAD_ERROR}); {BUILD_HINT}, or pass impl='ref'.")
