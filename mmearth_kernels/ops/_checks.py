"""Argument checks shared by the public ops: clear Python errors naming the argument and what was expected.

The C++ kernels repeat them (``csrc/checks.h``) for direct ``torch.ops`` calls; these run first so a
caller of :func:`mmearth_kernels.sparse_dwconv2d` or :func:`mmearth_kernels.grn` sees plain words.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def autocast_params(x: torch.Tensor, *params):
    """Under autocast, an activation arrives in the autocast dtype while the parameters stay float32:
    cast the parameters to x's dtype, as autocast does for a conv or linear. Otherwise unchanged, so a
    plain dtype mismatch still fails with a clear error."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev) and x.dtype == torch.get_autocast_dtype(dev):
        return tuple(p.to(x.dtype) if isinstance(p, torch.Tensor) and p.is_floating_point() else p for p in params)
    return params


def check_tensor(t, name: str, *, dim: int | None = None, like: torch.Tensor | None = None,
                 shape: tuple | None = None) -> None:
    """Clear Python-side errors for caller mistakes (the C++ checks repeat them for direct op calls)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(t.shape)}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if like is not None:
        if t.device != like.device:
            raise ValueError(f"{name} is on {t.device} but x is on {like.device}")
        if t.dtype != like.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x has {like.dtype}; use one dtype for all inputs")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
