"""Patch-tiled Triton kernels for the sparse depthwise conv on layouts made of whole b x b blocks.

FCMAE keeps whole patches: at a stage of block size b (8, 4, 2, 1 at the four stages) every active
site lies in a fully active, aligned b x b block (``SparseLayout.block``). With the rows in raster
order inside a sample, the row of pixel (i, j) of a kept patch is ``row0 + i * stride + j``, where
``row0`` is the row of the patch's top-left pixel and ``stride`` = b x (kept patches in its patch
row). So a tiny per-patch table (``SparseLayout.patch_table``: ``row0`` per patch, ``stride`` per patch row, -1
padding around the grid; built once per layout) replaces the per-tap,
per-row ``inv_map`` look-ups of the row-tiled kernels: a program owns TP kept patches (TP * b^2 rows) x
BLOCK_C channels, and every tap's neighbour row is arithmetic plus a look-up in a table of a few KB
(L1-resident) that all rows of a patch share. No boundary tests: the padding reads as inactive.

* ``_tiled_gather_kernel``: output-stationary forward; with the flipped kernel, the input gradient.
* ``_tiled_wgrad_kernel``: a program owns TP_W kept patches and a channel block, keeps the tile's
  ``dy`` in registers and writes its own slot ``dw_part[tile, tap, C]`` once per tap (no atomics, no
  read-modify-write); the host sums the slots in tile order: deterministic.

The row order and the public behaviour are those of every other impl (tested equal); only the way
neighbours are found differs. Host launchers only; registration is in ``mmearth_kernels/ops``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import acc_dtype, autotune_configs, config, fp64_configs, on_input_device
from ._dwconv_common import conv_shape, ln_outputs, reduce_parts, start_backward, taps_major, with_config
from ._layernorm import merge_stats, normalise_rows

_FWD_CONFIGS = autotune_configs([
    config(4, BLOCK_C=64),
    config(2, BLOCK_C=32),
    config(8, BLOCK_C=128),
])
LN_CONFIGS = [  # the fused conv + LayerNorm walks all C channels per program; all tested (forward_ln's `config`)
    config(8, BLOCK_C=64),
    config(4, BLOCK_C=32),
]
_LN_CONFIGS = autotune_configs(LN_CONFIGS)
_WGRAD_CONFIGS = autotune_configs([
    config(4, BLOCK_C=32),
    config(8, BLOCK_C=64),  # on 4 warps the [256, 64] dy tile and a tap's x tile spilled (issue 26)
])
# fp64 (tests): fewer values per thread (the tiles above spill in fp64: benchmarks/kernel_resources)
_FWD_FP64 = fp64_configs("x_ptr", [config(8, BLOCK_C=64), config(2, BLOCK_C=32)])
_LN_FP64 = fp64_configs("x_ptr", [config(8, BLOCK_C=32)])
_WGRAD_FP64 = fp64_configs("dy_ptr", [config(8, BLOCK_C=32)])
ROWS_FWD = 64     # rows per forward program: TP = ROWS_FWD // b^2 patches (1 at b = 8, 64 at b = 1)
ROWS_WGRAD = 256  # rows per weight-gradient program (fewer partial slots to write and sum)


def patches_per_program(block: int, rows: int) -> int:
    return max(1, rows // (block * block))


@triton.jit
def _tile_rows(patches_ptr, row0_ptr, stride_ptr, pid, N, NP, GH, GW, P: tl.constexpr, BS: tl.constexpr,
               TP: tl.constexpr, RP: tl.constexpr):
    """The rows of one tile: (validity, sample, padded patch row / column, local i, j, own row index).
    RP = TP * BS^2 rounded up to a power of two (tl.arange's rule); the lanes beyond are invalid, and so is a row
    index outside [0, N) (a corrupt table reads nothing out of bounds)."""
    r = tl.arange(0, RP)
    pidx = pid * TP + r // (BS * BS)
    li = (r % (BS * BS)) // BS
    lj = r % BS
    valid = (r < TP * BS * BS) & (pidx < NP)
    slot = tl.load(patches_ptr + pidx, mask=valid, other=0).to(tl.int64)
    b = slot // (GH * GW)
    rem = slot - b * (GH * GW)
    php = rem // GW + P  # padded coordinates
    pwp = rem % GW + P
    GWP = GW + 2 * P
    GHP = GH + 2 * P
    own0 = tl.load(row0_ptr + (b * GHP + php) * GWP + pwp, mask=valid, other=0).to(tl.int64)
    owns = tl.load(stride_ptr + b * GHP + php, mask=valid, other=0).to(tl.int64)
    rows = own0 + li * owns + lj
    return valid & (rows >= 0) & (rows < N), b, php, pwp, li, lj, rows


@triton.jit
def _program_tile(patches_ptr, row0_ptr, stride_ptr, N, C, NP, GH, GW, P: tl.constexpr, BS: tl.constexpr,
                  TP: tl.constexpr, RP: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile (grid x) and channel block (grid y): (tile, channels, channel mask, then _tile_rows')."""
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    valid, b, php, pwp, li, lj, rows = _tile_rows(patches_ptr, row0_ptr, stride_ptr, pid, N, NP, GH, GW, P, BS, TP,
                                                  RP)
    return pid, cols, cols < C, valid, b, php, pwp, li, lj, rows


@triton.jit
def _neighbour(row0_ptr, stride_ptr, valid, b, php, pwp, li, lj, N, GH, GW, dy, dx,
               P: tl.constexpr, BS: tl.constexpr):
    """Row of the neighbour (i + dy, j + dx) of each tile row, and whether it is active (padding and masked
    patches read -1; a corrupt table entry outside [0, N) reads as inactive)."""
    hh = li + dy + P * BS  # >= 0: floor division below is exact for the negative offsets too
    ww = lj + dx + P * BS
    oy = hh // BS - P
    ox = ww // BS - P
    ni = hh % BS
    nj = ww % BS
    GWP = GW + 2 * P
    GHP = GH + 2 * P
    n0 = tl.load(row0_ptr + (b * GHP + php + oy) * GWP + pwp + ox, mask=valid, other=-1).to(tl.int64)
    ns = tl.load(stride_ptr + b * GHP + php + oy, mask=valid, other=0).to(tl.int64)
    q = n0 + ni * ns + nj
    return q, valid & (n0 >= 0) & (q < N)


@triton.jit
def _tiled_conv_block(x_ptr, w_ptr, b_ptr, row0_ptr, stride_ptr, valid, b, php, pwp, li, lj, cols, cmask, N, GH, GW,
                      C, K: tl.constexpr, BS: tl.constexpr, P: tl.constexpr, RP: tl.constexpr, HAS_BIAS: tl.constexpr,
                      ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """``bias[c] + sum_t w[t, c] * x[q_t(p), c]`` for the tile's rows and a block of channels."""
    acc = tl.zeros((RP, BLOCK_C), dtype=ACC)
    # a loop over the taps, not tl.static_range: unrolled, the taps' loads were live together and spilled; the
    # weight gradient's compile with 1-px patches did not finish in minutes (benchmarks/kernel_resources)
    for t in range(K * K):
        q, ok = _neighbour(row0_ptr, stride_ptr, valid, b, php, pwp, li, lj, N, GH, GW, t // K - K // 2,
                           t % K - K // 2, P, BS)
        xv = tl.load(x_ptr + q[:, None] * C + cols[None, :], mask=ok[:, None] & cmask[None, :], other=0.0)
        acc += xv.to(ACC) * tl.load(w_ptr + t * C + cols, mask=cmask, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cmask, other=0.0)[None, :]
    return acc


@triton.autotune(configs=_FWD_CONFIGS, key=["C", "K", "BS", "HAS_BIAS"], prune_configs_by=_FWD_FP64)
@triton.jit
def _tiled_gather_kernel(x_ptr, w_ptr, b_ptr, row0_ptr, stride_ptr, patches_ptr, y_ptr, N, C, NP, GH, GW,
                         K: tl.constexpr, BS: tl.constexpr, P: tl.constexpr, TP: tl.constexpr, RP: tl.constexpr,
                         HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """y[p, c] = bias[c] + sum_t w[t, c] * x[q_t(p), c] for the TP * BS^2 rows p of this program's patches."""
    pid, cols, cmask, valid, b, php, pwp, li, lj, rows = _program_tile(patches_ptr, row0_ptr, stride_ptr, N, C, NP,
                                                                       GH, GW, P, BS, TP, RP, BLOCK_C)
    acc = _tiled_conv_block(x_ptr, w_ptr, b_ptr, row0_ptr, stride_ptr, valid, b, php, pwp, li, lj, cols, cmask, N,
                            GH, GW, C, K, BS, P, RP, HAS_BIAS, ACC, BLOCK_C)
    tl.store(y_ptr + rows[:, None] * C + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=valid[:, None] & cmask[None, :])


@triton.autotune(configs=_LN_CONFIGS, key=["C", "K", "BS", "HAS_BIAS"], prune_configs_by=_LN_FP64)
@triton.jit
def _tiled_gather_ln_kernel(x_ptr, w_ptr, b_ptr, lnw_ptr, lnb_ptr, row0_ptr, stride_ptr, patches_ptr, y1_ptr, y_ptr,
                            mean_ptr, rstd_ptr, N, C, NP, GH, GW, eps, K: tl.constexpr, BS: tl.constexpr,
                            P: tl.constexpr, TP: tl.constexpr, RP: tl.constexpr, HAS_BIAS: tl.constexpr,
                            ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """The conv of this program's patches over all channels (y1, stored) and its LayerNorm: _layernorm.py."""
    pid = tl.program_id(0).to(tl.int64)
    valid, b, php, pwp, li, lj, rows = _tile_rows(patches_ptr, row0_ptr, stride_ptr, pid, N, NP, GH, GW, P, BS, TP,
                                                  RP)
    mean = tl.zeros((RP,), dtype=ACC)
    m2 = tl.zeros((RP,), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        acc = _tiled_conv_block(x_ptr, w_ptr, b_ptr, row0_ptr, stride_ptr, valid, b, php, pwp, li, lj, cols, cmask,
                                N, GH, GW, C, K, BS, P, RP, HAS_BIAS, ACC, BLOCK_C)
        v = acc.to(y1_ptr.dtype.element_ty)
        tl.store(y1_ptr + rows[:, None] * C + cols[None, :], v, mask=valid[:, None] & cmask[None, :])
        mean, m2 = merge_stats(mean, m2, v.to(ACC), cmask, c0, C, BLOCK_C)
    normalise_rows(y1_ptr, y_ptr, lnw_ptr, lnb_ptr, mean_ptr, rstd_ptr, rows, valid, mean, m2, C, eps, BLOCK_C)


@triton.autotune(configs=_WGRAD_CONFIGS, key=["C", "K", "BS"], prune_configs_by=_WGRAD_FP64)
@triton.jit
def _tiled_wgrad_kernel(dy_ptr, x_ptr, row0_ptr, stride_ptr, patches_ptr, dw_part_ptr, db_part_ptr, N, C, NP,
                        GH, GW, K: tl.constexpr, BS: tl.constexpr, P: tl.constexpr, TP: tl.constexpr,
                        RP: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """dw_part[tile, t, c] = sum over the tile's rows p of dy[p, c] * x[q_t(p), c]; db_part[tile, c] = sum dy."""
    pid, cols, cmask, valid, b, php, pwp, li, lj, rows = _program_tile(patches_ptr, row0_ptr, stride_ptr, N, C, NP,
                                                                       GH, GW, P, BS, TP, RP, BLOCK_C)
    dy = tl.load(dy_ptr + rows[:, None] * C + cols[None, :], mask=valid[:, None] & cmask[None, :],
                 other=0.0).to(ACC)
    tl.store(db_part_ptr + pid * C + cols, tl.sum(dy, axis=0), mask=cmask)
    for t in range(K * K):  # a loop, not unrolled: see _tiled_conv_block
        q, ok = _neighbour(row0_ptr, stride_ptr, valid, b, php, pwp, li, lj, N, GH, GW, t // K - K // 2,
                           t % K - K // 2, P, BS)
        xv = tl.load(x_ptr + q[:, None] * C + cols[None, :], mask=ok[:, None] & cmask[None, :], other=0.0).to(ACC)
        tl.store(dw_part_ptr + (pid * K * K + t) * C + cols, tl.sum(dy * xv, axis=0), mask=cmask)


def _launch_gather(x, w_taps, bias, tables, block, K, out):
    row0, stride, patches, P = tables  # contiguous (the launchers make them so)
    assert P * block >= K // 2, "the patch table's padding is smaller than the kernel's halo"
    N, C = x.shape
    _, ghp, gwp = row0.shape
    NP = patches.shape[0]
    TP = patches_per_program(block, ROWS_FWD)

    def grid(meta):
        return (triton.cdiv(NP, TP), triton.cdiv(C, meta["BLOCK_C"]))

    _tiled_gather_kernel[grid](x, w_taps, bias if bias is not None else w_taps, row0, stride, patches, out, N, C, NP,
                               ghp - 2 * P, gwp - 2 * P, K=K, BS=block, P=P, TP=TP,
                               RP=triton.next_power_of_2(TP * block * block), HAS_BIAS=bias is not None,
                               ACC=acc_dtype(x.dtype))


def _tables(row0, stride, patches, pad):
    """The kernels index the table as dense arrays: under torch.compile its tensors may arrive with other strides."""
    return row0.contiguous(), stride.contiguous(), patches.contiguous(), pad


@on_input_device
def forward(x, weight, bias, row0, stride, patches, pad: int, block: int) -> torch.Tensor:
    assert x.is_contiguous() and weight.is_contiguous(), "x and weight must be contiguous"
    N, C, K, _, w = conv_shape(x, weight)
    y = torch.empty_like(x)
    if N == 0 or C == 0:
        return y
    b = bias.to(w.dtype).contiguous() if bias is not None else None
    _launch_gather(x, w, b, _tables(row0, stride, patches, pad), block, K, y)
    return y


@on_input_device
def forward_ln(x, weight, bias, ln_weight, ln_bias, row0, stride, patches, pad: int, block: int, eps: float,
               config=None):
    """``(y, y1, mean, rstd)``: the conv y1 and its LayerNorm y in one kernel (see ``_layernorm.py``). ``config``:
    one of ``LN_CONFIGS`` instead of the autotuned one (tests)."""
    assert x.is_contiguous() and weight.is_contiguous(), "x and weight must be contiguous"
    N, C = x.shape
    K = weight.shape[-1]
    y, y1, mean, rstd, lnw, lnb = ln_outputs(x, ln_weight, ln_bias)
    if N == 0 or C == 0:
        return y, y1, mean, rstd
    w = taps_major(weight)
    b = bias.to(w.dtype).contiguous() if bias is not None else w
    row0, stride, patches, P = _tables(row0, stride, patches, pad)
    assert P * block >= K // 2, "the patch table's padding is smaller than the kernel's halo"
    NP = patches.shape[0]
    TP = patches_per_program(block, ROWS_FWD)
    kernel, meta = with_config(_tiled_gather_ln_kernel, config)
    kernel[(triton.cdiv(NP, TP),)](
        x, w, b, lnw, lnb, row0, stride, patches, y1, y, mean, rstd, N, C, NP, row0.shape[1] - 2 * P,
        row0.shape[2] - 2 * P, float(eps), K=K, BS=block, P=P, TP=TP, RP=triton.next_power_of_2(TP * block * block),
        HAS_BIAS=bias is not None, ACC=acc_dtype(x.dtype), **meta)
    return y, y1, mean, rstd


@on_input_device
def backward(grad_out, x, weight, row0, stride, patches, pad: int, block: int, output_mask=(True, True, True)):
    """``(dx, dweight, dbias)``; those whose ``output_mask`` entry is False are not computed (empty tensors)."""
    grad_out, dx, finish, early = start_backward(grad_out, x, weight, output_mask)
    if early is not None:
        return early
    need_dx, need_dw, need_db = output_mask
    N, C, K, KK, w = conv_shape(x, weight)
    tables = _tables(row0, stride, patches, pad)
    row0, stride, patches, _ = tables
    if need_dx:  # dx[q] = sum_t w[t] dy[q - o_t] = sum_t w[KK-1-t] dy[q + o_t]: the gather with flipped taps
        _launch_gather(grad_out, w.flip(0).contiguous(), None, tables, block, K, dx)
    if not (need_dw or need_db):
        return finish(None, None)
    P = pad
    NP = patches.shape[0]
    TP = patches_per_program(block, ROWS_WGRAD)
    tiles = triton.cdiv(NP, TP)
    dw_part = torch.empty(tiles, KK, C, dtype=w.dtype, device=x.device)
    db_part = torch.empty(tiles, C, dtype=w.dtype, device=x.device)

    def grid(meta):
        return (tiles, triton.cdiv(C, meta["BLOCK_C"]))

    _tiled_wgrad_kernel[grid](grad_out, x, row0, stride, patches, dw_part, db_part, N, C, NP,
                              row0.shape[1] - 2 * P, row0.shape[2] - 2 * P, K=K, BS=block, P=P, TP=TP,
                              RP=triton.next_power_of_2(TP * block * block), ACC=acc_dtype(x.dtype))
    return finish(*reduce_parts(dw_part, db_part, weight))  # summed in tile order: deterministic
