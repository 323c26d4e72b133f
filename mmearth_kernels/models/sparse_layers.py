"""Gather-based sparse layers on the packed layout (no kernel maps, no hashing).

Every layer is exact for FCMAE masks: active sites come in patch-aligned blocks, so a strided
window is either entirely active or entirely masked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..layout import SparseLayout


def _site_coords(layout: SparseLayout):
    pos = layout.row_pos.long()
    hw = layout.height * layout.width
    b = pos // hw
    rem = pos - b * hw
    return b, rem // layout.width, rem % layout.width


def neighbour_rows(layout: SparseLayout, k: int) -> torch.Tensor:
    """``[N, k*k]`` row of each tap's neighbour (row-major taps, as nn.Conv2d), ``N`` (a zero row) where
    the neighbour is outside the image or masked."""
    b, h, w = _site_coords(layout)
    r = k // 2
    d = torch.arange(-r, r + 1, device=layout.device)
    hh = h[:, None, None] + d[None, :, None]
    ww = w[:, None, None] + d[None, None, :]
    inside = (hh >= 0) & (hh < layout.height) & (ww >= 0) & (ww < layout.width)
    q = layout.inv_map[b[:, None, None], hh.clamp(0, layout.height - 1), ww.clamp(0, layout.width - 1)].long()
    q = torch.where(inside & (q >= 0), q, torch.full_like(q, layout.num_rows))
    return q.reshape(q.shape[0], k * k)


def submanifold_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layout: SparseLayout,
                     nbr: torch.Tensor | None = None) -> torch.Tensor:
    """Dense-channel submanifold conv (``nn.Conv2d(Cin, Cout, k, padding=k//2)`` weights) on packed rows:
    gather the k*k active neighbours of every row, then one GEMM. ``x`` ``[N, Cin]`` -> ``[N, Cout]``."""
    cout, cin, k, _ = weight.shape
    nbr = neighbour_rows(layout, k) if nbr is None else nbr
    padded = torch.cat([x, x.new_zeros(1, cin)], dim=0)           # row N is the zero row
    cols = padded[nbr].reshape(x.shape[0], k * k * cin)            # (tap, cin) order
    w = weight.permute(0, 2, 3, 1).reshape(cout, k * k * cin)      # (cout, tap, cin)
    return F.linear(cols, w, bias)


def child_rows(coarse: SparseLayout, fine: SparseLayout, s: int) -> torch.Tensor:
    """``[N_coarse, s*s]`` rows of ``fine`` covered by each coarse row (row-major within the s x s cell)."""
    b, h, w = _site_coords(coarse)
    d = torch.arange(s, device=coarse.device)
    hh = h[:, None, None] * s + d[None, :, None]
    ww = w[:, None, None] * s + d[None, None, :]
    return fine.inv_map[b[:, None, None], hh, ww].reshape(b.shape[0], s * s).long()


def strided_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, children: torch.Tensor | None,
                 depthwise: bool = False) -> torch.Tensor:
    """Kernel = stride conv (``nn.Conv2d(..., k=s, stride=s)`` weights) from fine rows to coarse rows.

    ``children`` from :func:`child_rows`; every child is active (patch-aligned masks). None: s = 1,
    the same layout on both sides (a per-row linear map, no gather). Depthwise weights are
    ``[C, 1, s, s]``; dense ones ``[Cout, Cin, s, s]``.
    """
    if children is None:
        if depthwise:
            y = x * weight.reshape(1, -1)
            return y + bias if bias is not None else y
        return F.linear(x, weight.reshape(weight.shape[0], -1), bias)
    n, ss = children.shape
    cols = x[children]                                             # [n, s*s, Cin]
    if depthwise:
        w = weight.reshape(weight.shape[0], ss).t()                # [s*s, C]
        y = (cols * w).sum(dim=1)
        return y + bias if bias is not None else y
    cout = weight.shape[0]
    w = weight.permute(0, 2, 3, 1).reshape(cout, -1)               # (cout, dy, dx, cin)
    return F.linear(cols.reshape(n, w.shape[1]), w, bias)          # explicit: n may be 0 (all masked)
