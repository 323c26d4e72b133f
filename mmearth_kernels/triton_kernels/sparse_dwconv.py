"""Triton kernels for the sparse (submanifold) masked depthwise conv on the packed layout.

* ``_gather_kernel``: output-stationary. A program owns BLOCK_R active rows x BLOCK_C channels and
  accumulates all K*K taps in fp32 (fp64 for fp64); inactive or out-of-image neighbours read as
  zero through the load mask; no atomics. With the flipped kernel it is also the input gradient.
* ``_wgrad_kernel``: weight/bias gradient partials. A program owns one part of the rows and a
  channel block; it decodes a row block once, loads grad_out once, and for every tap adds
  ``sum_rows dy * x[neighbour]`` into its own slot of ``dw_part[part, tap, C]`` (no other program
  writes there: deterministic, no atomics). The host sums the parts in a fixed order.

Host launchers only; the torch.library registration lives in ``mmearth_kernels/ops``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._constants import dwconv_parts
from . import acc_dtype, autotune_configs, config, fp64_configs, on_input_device
from ._dwconv_common import conv_shape, ln_outputs, reduce_parts, start_backward, taps_major, with_config
from ._layernorm import merge_stats, normalise_rows

# Short lists on purpose: every config is one more compile per specialisation on a cold cache, and the GPU check
# must fit its window. Widen them when tuning (benchmarks/gpu_check.sh shows what wins); every config must pass
# `python -m benchmarks.kernel_resources --check` (no spill, a bounded compile).
_FWD_CONFIGS = autotune_configs([
    config(4, BLOCK_R=32, BLOCK_C=64),
    config(4, BLOCK_R=16, BLOCK_C=128),
    config(4, BLOCK_R=64, BLOCK_C=32),
])
# The fused conv + LayerNorm: a program walks all C channels of its rows, so fewer rows per program. All of them
# are tested under the interpreter (forward_ln's `config`), not only the one autotune keeps there.
LN_CONFIGS = [
    config(8, BLOCK_R=32, BLOCK_C=64),
    config(8, BLOCK_R=16, BLOCK_C=128),
    config(2, BLOCK_R=16, BLOCK_C=32),
]
_LN_CONFIGS = autotune_configs(LN_CONFIGS)
_WGRAD_CONFIGS = autotune_configs([
    config(4, BLOCK_R=32, BLOCK_C=64),
    config(4, BLOCK_R=64, BLOCK_C=32),
])
# fp64 (tests): the same tiles over twice the threads (at 4 warps fp64 spills on sm_80: benchmarks/kernel_resources)
_WGRAD_FP64 = fp64_configs("dy_ptr", [config(8, BLOCK_R=32, BLOCK_C=64), config(8, BLOCK_R=64, BLOCK_C=32)])


@triton.jit
def _decode_rows(row_pos_ptr, rows, N, H, W, SITES):
    """(row in range, site valid, sample, h, w) of each row. As the C++ kernels (csrc/sparse_index.h): a position
    outside the SITES = B*H*W sites has no neighbours."""
    rmask = rows < N
    pos = tl.load(row_pos_ptr + rows, mask=rmask, other=0).to(tl.int64)
    pvalid = rmask & (pos >= 0) & (pos < SITES)
    hw = H * W
    b = pos // hw
    rem = pos - b * hw
    h = rem // W
    return rmask, pvalid, b, h, rem - h * W


@triton.jit
def _conv_block(x_ptr, w_ptr, b_ptr, inv_map_ptr, pvalid, b, h, w, cols, cmask, N, C, H, W, K: tl.constexpr,
                HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """``bias[c] + sum_t w[t, c] * x[q_t(p), c]`` for a block of rows and channels, over the active neighbours
    q_t(p); an inv_map entry outside [0, N) reads as inactive, so nothing is read out of bounds."""
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=ACC)
    # a loop over the taps, not tl.static_range: unrolled, all 49 taps' loads were live at once and ptxas spilled
    # up to 11 KB per thread (and took a minute per config); benchmarks/kernel_resources checks every config
    for t in range(K * K):
        hh = h + (t // K - K // 2)
        ww = w + (t % K - K // 2)
        inside = pvalid & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        q = tl.load(inv_map_ptr + (b * H + hh) * W + ww, mask=inside, other=-1).to(tl.int64)
        xv = tl.load(x_ptr + q[:, None] * C + cols[None, :], mask=((q >= 0) & (q < N))[:, None] & cmask[None, :],
                     other=0.0)
        wv = tl.load(w_ptr + t * C + cols, mask=cmask, other=0.0)
        acc += xv.to(ACC) * wv[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cmask, other=0.0)[None, :]
    return acc


@triton.autotune(configs=_FWD_CONFIGS, key=["C", "K", "HAS_BIAS", "H"])
@triton.jit
def _gather_kernel(x_ptr, w_ptr, b_ptr, row_pos_ptr, inv_map_ptr, y_ptr, N, C, H, W, SITES,
                   K: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """y[p, c] = bias[c] + sum_t w[t, c] * x[q_t(p), c]   over the active neighbours q_t(p) of row p."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rmask, pvalid, b, h, w = _decode_rows(row_pos_ptr, rows, N, H, W, SITES)
    acc = _conv_block(x_ptr, w_ptr, b_ptr, inv_map_ptr, pvalid, b, h, w, cols, cmask, N, C, H, W, K, HAS_BIAS, ACC,
                      BLOCK_R, BLOCK_C)
    tl.store(y_ptr + rows[:, None] * C + cols[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


@triton.autotune(configs=_LN_CONFIGS, key=["C", "K", "HAS_BIAS", "H"])
@triton.jit
def _gather_ln_kernel(x_ptr, w_ptr, b_ptr, lnw_ptr, lnb_ptr, row_pos_ptr, inv_map_ptr, y1_ptr, y_ptr, mean_ptr,
                      rstd_ptr, N, C, H, W, SITES, eps, K: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """The conv of BLOCK_R rows over all channels (y1, stored) and its LayerNorm (y, mean, rstd): _layernorm.py."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask, pvalid, b, h, w = _decode_rows(row_pos_ptr, rows, N, H, W, SITES)
    mean = tl.zeros((BLOCK_R,), dtype=ACC)
    m2 = tl.zeros((BLOCK_R,), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        acc = _conv_block(x_ptr, w_ptr, b_ptr, inv_map_ptr, pvalid, b, h, w, cols, cmask, N, C, H, W, K, HAS_BIAS,
                          ACC, BLOCK_R, BLOCK_C)
        v = acc.to(y1_ptr.dtype.element_ty)
        tl.store(y1_ptr + rows[:, None] * C + cols[None, :], v, mask=rmask[:, None] & cmask[None, :])
        mean, m2 = merge_stats(mean, m2, v.to(ACC), cmask, c0, C, BLOCK_C)
    normalise_rows(y1_ptr, y_ptr, lnw_ptr, lnb_ptr, mean_ptr, rstd_ptr, rows, rmask, mean, m2, C, eps, BLOCK_C)


@triton.autotune(configs=_WGRAD_CONFIGS, key=["C", "K", "H"], reset_to_zero=["dw_part_ptr", "db_part_ptr"],
                 prune_configs_by=_WGRAD_FP64)
@triton.jit
def _wgrad_kernel(dy_ptr, x_ptr, row_pos_ptr, inv_map_ptr, dw_part_ptr, db_part_ptr, N, C, H, W, SITES, PARTS,
                  K: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """dw_part[part, t, c] = sum over rows p of the part of dy[p, c] * x[q_t(p), c]; db_part[part, c] = sum dy."""
    part = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1).to(tl.int64)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    lo = (N * part) // PARTS
    hi = (N * (part + 1)) // PARTS
    hw = H * W
    db = tl.zeros((BLOCK_C,), dtype=ACC)
    for r0 in range(lo, hi, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        rmask = rows < hi
        pos = tl.load(row_pos_ptr + rows, mask=rmask, other=0).to(tl.int64)
        pvalid = rmask & (pos >= 0) & (pos < SITES)
        b = pos // hw
        rem = pos - b * hw
        h = rem // W
        w = rem - h * W
        dy = tl.load(dy_ptr + rows[:, None] * C + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                     other=0.0).to(ACC)
        db += tl.sum(dy, axis=0)
        for t in range(K * K):  # a loop, not unrolled: see _conv_block
            hh = h + (t // K - K // 2)
            ww = w + (t % K - K // 2)
            inside = pvalid & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            q = tl.load(inv_map_ptr + (b * H + hh) * W + ww, mask=inside, other=-1).to(tl.int64)
            xv = tl.load(x_ptr + q[:, None] * C + cols[None, :], mask=((q >= 0) & (q < N))[:, None] & cmask[None, :],
                         other=0.0).to(ACC)
            slot = dw_part_ptr + (part * K * K + t) * C + cols
            tl.store(slot, tl.load(slot, mask=cmask, other=0.0) + tl.sum(dy * xv, axis=0), mask=cmask)
    tl.store(db_part_ptr + part * C + cols, db, mask=cmask)


def _check(x, weight, row_pos, inv_map):
    assert x.is_contiguous() and weight.is_contiguous(), "x and weight must be contiguous"
    assert row_pos.dtype == inv_map.dtype == torch.int32, "row_pos and inv_map must be int32"
    assert x.shape[0] == row_pos.shape[0], "x rows must match the layout"


@on_input_device
def forward(x, weight, bias, row_pos, inv_map) -> torch.Tensor:
    _check(x, weight, row_pos, inv_map)
    N, C, K, _, w = conv_shape(x, weight)
    y = torch.empty_like(x)
    if N == 0 or C == 0:
        return y
    b = bias.to(w.dtype).contiguous() if bias is not None else w  # dummy pointer when HAS_BIAS is False
    _, H, W = inv_map.shape

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_R"]), triton.cdiv(C, meta["BLOCK_C"]))

    _gather_kernel[grid](x, w, b, row_pos, inv_map, y, N, C, H, W, inv_map.numel(), K=K, HAS_BIAS=bias is not None,
                         ACC=acc_dtype(x.dtype))
    return y


@on_input_device
def forward_ln(x, weight, bias, ln_weight, ln_bias, row_pos, inv_map, eps: float, config=None):
    """``(y, y1, mean, rstd)``: the conv y1 and its LayerNorm y in one kernel (see ``_layernorm.py``). ``config``:
    one of ``LN_CONFIGS`` instead of the autotuned one (tests)."""
    _check(x, weight, row_pos, inv_map)
    N, C = x.shape
    y, y1, mean, rstd, lnw, lnb = ln_outputs(x, ln_weight, ln_bias)
    if N == 0 or C == 0:
        return y, y1, mean, rstd
    w = taps_major(weight)
    b = bias.to(w.dtype).contiguous() if bias is not None else w
    _, H, W = inv_map.shape

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_R"]),)

    kernel, meta = with_config(_gather_ln_kernel, config)
    kernel[grid](x, w, b, lnw, lnb, row_pos, inv_map, y1, y, mean, rstd, N, C, H, W, inv_map.numel(), float(eps),
                 K=weight.shape[-1], HAS_BIAS=bias is not None, ACC=acc_dtype(x.dtype), **meta)
    return y, y1, mean, rstd


@on_input_device
def backward(grad_out, x, weight, row_pos, inv_map, output_mask=(True, True, True)):
    """``(dx, dweight, dbias)``; those whose ``output_mask`` entry is False are not computed (empty tensors)."""
    _check(x, weight, row_pos, inv_map)
    grad_out, dx, finish, early = start_backward(grad_out, x, weight, output_mask)
    if early is not None:
        return early
    need_dx, need_dw, need_db = output_mask
    N, C, K, KK, w = conv_shape(x, weight)
    # Flipped taps: dx[q] = sum_t w[t] dy[q - o_t] = sum_t w[KK-1-t] dy[q + o_t].
    w_flip = w.flip(0).contiguous()
    _, H, W = inv_map.shape
    ACC = acc_dtype(x.dtype)

    def grid(meta):
        return (triton.cdiv(N, meta["BLOCK_R"]), triton.cdiv(C, meta["BLOCK_C"]))

    if need_dx:
        _gather_kernel[grid](grad_out, w_flip, w_flip, row_pos, inv_map, dx, N, C, H, W, inv_map.numel(), K=K,
                             HAS_BIAS=False, ACC=ACC)
    if not (need_dw or need_db):
        return finish(None, None)
    parts = dwconv_parts(N)  # depends only on N, the C++ rule (_constants.py): deterministic partial sums
    dw_part = torch.zeros(parts, KK, C, dtype=w.dtype, device=x.device)
    db_part = torch.zeros(parts, C, dtype=w.dtype, device=x.device)

    def wgrid(meta):
        return (parts, triton.cdiv(C, meta["BLOCK_C"]))

    _wgrad_kernel[wgrid](grad_out, x, row_pos, inv_map, dw_part, db_part, N, C, H, W, inv_map.numel(), parts, K=K,
                         ACC=ACC)
    return finish(*reduce_parts(dw_part, db_part, weight))
