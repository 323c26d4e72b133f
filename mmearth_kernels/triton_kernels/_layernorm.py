"""The LayerNorm epilogue of the fused depthwise conv + LayerNorm kernels (``sparse_dwconv2d_ln``), shared by the
row-tiled and the patch-tiled forward.

A program owns a tile of rows and *all* C channels, walked in blocks of BLOCK_C: for each block it computes the
conv, stores it (y1, which the LayerNorm backward needs) and folds the block's mean and centred sum of squares
into the row's running statistics (Chan's parallel merge: no ``E[x^2] - E[x]^2`` cancellation). The second pass
reads its own y1 back (from L1/L2: the tile was just written) and writes the normalised output. The unfused pair
writes y1, then a separate LayerNorm reads it from DRAM and writes y2: one read of the C-wide tensor less each
forward (docs/bytes-model.md), and one launch less per block.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def merge_stats(mean, m2, v, cmask, c0, C, BLOCK_C: tl.constexpr):
    """Fold the channel block ``[c0, c0 + BLOCK_C)`` (``v``: [rows, BLOCK_C], in the accumulation dtype, columns
    past C masked out) into the running per-row ``mean`` and centred sum of squares ``m2`` of channels [0, c0).
    Every earlier block was full, so c0 channels are in the running statistics."""
    # the counts in the accumulation dtype (`* 1.0` would make them fp32, and fp64 statistics lose 1e-8)
    zero = tl.zeros_like(mean)
    nb = zero + tl.minimum(C - c0, BLOCK_C)
    na = zero + c0
    bmean = tl.sum(tl.where(cmask[None, :], v, 0.0), axis=1) / nb
    d = tl.where(cmask[None, :], v - bmean[:, None], 0.0)
    bm2 = tl.sum(d * d, axis=1)
    n = na + nb
    delta = bmean - mean
    return mean + delta * (nb / n), m2 + bm2 + delta * delta * (na * nb / n)


@triton.jit
def normalise_rows(y1_ptr, y_ptr, lnw_ptr, lnb_ptr, mean_ptr, rstd_ptr, rows, rmask, mean, m2, C, eps,
                   BLOCK_C: tl.constexpr):
    """Store the rows' mean and 1/std, then y = (y1 - mean) * rstd * ln_weight + ln_bias from the y1 this program
    stored (its stored, rounded values: what the unfused LayerNorm reads)."""
    rstd = 1.0 / tl.sqrt(m2 / C + eps)
    tl.store(mean_ptr + rows, mean, mask=rmask)
    tl.store(rstd_ptr + rows, rstd, mask=rmask)
    tl.debug_barrier()  # y1 was stored by other threads of this program: make those stores visible first
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        m = rmask[:, None] & cmask[None, :]
        v = tl.load(y1_ptr + rows[:, None] * C + cols[None, :], mask=m, other=0.0).to(mean.dtype)
        lw = tl.load(lnw_ptr + cols, mask=cmask, other=0.0)
        lb = tl.load(lnb_ptr + cols, mask=cmask, other=0.0)
        out = (v - mean[:, None]) * rstd[:, None] * lw[None, :] + lb[None, :]
        tl.store(y_ptr + rows[:, None] * C + cols[None, :], out.to(y_ptr.dtype.element_ty), mask=m)
