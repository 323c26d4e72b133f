"""Pure-PyTorch references: the ground truth for every kernel.

These are written for clarity, never bent to match a kernel. They work for any dtype and device
and under autograd and ``torch.compile``; they are also the ``impl="ref"`` fallback.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .layout import SparseLayout, from_dense, to_dense


def sparse_dwconv2d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        layout: SparseLayout) -> torch.Tensor:
    """Submanifold depthwise conv: at active sites, ``a * conv2d(a * x)`` (a = active indicator).

    ``y[p] = bias + sum_k w[k] * x[p + o_k]`` over the active neighbours of p only; a
    cross-correlation with zero padding, like ``nn.Conv2d(C, C, K, padding=K//2, groups=C)``.
    """
    C, K = weight.shape[0], weight.shape[-1]
    dense = to_dense(x, layout)  # zeros at masked sites = a * x
    y = F.conv2d(dense, weight, bias, padding=K // 2, groups=C)
    return from_dense(y, layout)  # keeping active rows only = the outer a *


def sparse_dwconv2d_ln_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ln_weight: torch.Tensor,
                           ln_bias: torch.Tensor, layout: SparseLayout, eps: float = 1e-6) -> torch.Tensor:
    """The depthwise conv, then a LayerNorm over the channels of each row: ``LN(sparse_dwconv2d(x))``."""
    y = sparse_dwconv2d_ref(x, weight, bias, layout)
    return F.layer_norm(y, (y.shape[-1],), ln_weight, ln_bias, eps)


def _group_ids(n_rows: int, offsets: torch.Tensor, batch_stats: bool) -> tuple[torch.Tensor, int]:
    rows = torch.arange(n_rows, device=offsets.device)
    if batch_stats:
        return torch.zeros_like(rows), 1
    return torch.searchsorted(offsets[1:].long(), rows, right=True), offsets.shape[0] - 1


def grn_scale(G: torch.Tensor, eps: float) -> torch.Tensor:
    """GRN's ``Nx = G / (mean_c G + eps)`` from the per-group L2 norms ``G`` (channels last)."""
    return G / (G.mean(dim=-1, keepdim=True) + eps)


def grn_apply(x: torch.Tensor, nx: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """GRN's output ``gamma * (x * Nx) + beta + x``."""
    return gamma * (x * nx) + beta + x


def grn_grouped(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, gid: torch.Tensor, groups: int,
                eps: float = 1e-6) -> torch.Tensor:
    """GRN over rows ``[N, C]`` where row i belongs to group ``gid[i]`` (of ``groups``): G is the L2 norm of each
    group's rows per channel. Where G = 0 the gradient of G is taken as 0 (the kernels do the same)."""
    sq = x.new_zeros(groups, x.shape[1]).index_add(0, gid, x * x)
    # sqrt has no derivative at 0 (a channel that is zero on every row of a sample, or a sample with
    # no rows): take the zero subgradient there instead of autograd's inf * 0 = NaN. Forward unchanged.
    # NaN is not 0: a NaN (or inf) element makes its sample's G, hence the whole sample's output, NaN,
    # as IEEE arithmetic and every kernel give it.
    nonzero = sq != 0
    G = torch.where(nonzero, sq, torch.ones_like(sq)).sqrt() * nonzero
    return grn_apply(x, grn_scale(G, eps)[gid], gamma, beta)


def grn_ref(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, offsets: torch.Tensor,
            eps: float = 1e-6, batch_stats: bool = False) -> torch.Tensor:
    """GRN over packed rows ``[N, C]`` grouped by sample (``offsets`` ``[B + 1]``).

    ``G = ||x||_2`` over the rows of a sample (or of the whole batch with ``batch_stats``),
    ``Nx = G / (mean_c G + eps)``, ``y = gamma * (x * Nx) + beta + x``.
    """
    gid, groups = _group_ids(x.shape[0], offsets, batch_stats)
    return grn_grouped(x, gamma, beta, gid, groups, eps)


def gelu_grn_ref(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, offsets: torch.Tensor,
                 eps: float = 1e-6, batch_stats: bool = False) -> torch.Tensor:
    """``GRN(GELU(h))`` on packed rows: the exact (erf) GELU, then :func:`grn_ref`."""
    return grn_ref(F.gelu(h), gamma, beta, offsets, eps, batch_stats)


def grn_dense(y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, stats: str = "per_sample",
              eps: float = 1e-6) -> torch.Tensor:
    """GRN on ``[B, H, W, C]`` in plain PyTorch, as the dense ConvNeXt V2 computes it (sites that must not count
    are zero, so they add nothing to the L2 norm): the dense backends' GRN and the eager baseline, what a user
    without this library runs. ``stats="batch"`` pools over the whole batch (the released MinkowskiGRN)."""
    G = torch.linalg.vector_norm(y, dim=(1, 2) if stats == "per_sample" else (0, 1, 2), keepdim=True)
    return grn_apply(y, grn_scale(G, eps), gamma.to(y.dtype), beta.to(y.dtype))
