"""Triton kernels for GRN on packed rows grouped by sample.

The rows of each group (a sample, or the whole batch with batch statistics) are cut into S parts
by the same rule as the C++ kernels; a program owns (group x part, channel block).

* ``_sums_kernel``: column sums over a part: ``x^2`` (forward) or ``g*x`` and ``g`` (backward).
* ``_apply_kernel``: ``out = a * s[group] + (b * t[group] if HAS_B else t)`` (forward: a = x,
  t = beta; backward: a = grad, b = x, t = coef).

* ``_fwd_stats_kernel`` / ``_bwd_stats_kernel``: the per-group statistics between the two passes (reduce
  the parts in order, G, its channel mean, the scale; in the backward also the coefficient and each group's
  dgamma/dbeta terms), one program per group: one launch where a chain of tiny ``[groups, C]`` torch ops
  took about 8 forward and 20 backward (launches are what bounds the GPU step, not these bytes).

So the forward reads x twice and writes y once, the backward reads (g, x) twice and writes dx once.

``GELU=True`` is the fused ``GRN(GELU(h))`` (op ``gelu_grn``): both kernels read the pre-activation h and
apply the exact (erf) GELU on load, the backward apply multiplies by GELU'(h). GELU's output is never
stored: a pass over the 4C-wide tensor less in each direction and one saved activation less
(docs/bytes-model.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._constants import GRN_ROWS_PER_PART, parts_per_group
from . import acc_dtype, autotune_configs, config, fp64_configs, on_input_device


_CONFIGS = autotune_configs([
    config(4, BLOCK_R=32, BLOCK_C=128),
    config(4, BLOCK_R=16, BLOCK_C=256),
    config(4, BLOCK_R=64, BLOCK_C=64),
])
# fp64 (tests): half the values per thread; GELU's backward in fp64 spills with the tiles above
_FP64 = fp64_configs("a_ptr", [
    config(8, BLOCK_R=16, BLOCK_C=128),
    config(4, BLOCK_R=8, BLOCK_C=128),
    config(4, BLOCK_R=16, BLOCK_C=64),
])


@triton.jit
def _gelu(h):
    """Exact GELU, as ``torch.nn.functional.gelu`` (approximate="none"): h * Phi(h)."""
    return 0.5 * h * (1.0 + tl.erf(h * 0.7071067811865476))


@triton.jit
def _gelu_grad(h):
    """d GELU / dh = Phi(h) + h * phi(h)."""
    return 0.5 * (1.0 + tl.erf(h * 0.7071067811865476)) + h * 0.3989422804014327 * tl.exp(-0.5 * h * h)


@triton.jit
def _program_part(offsets_ptr, N, C, S, BATCH: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's task (group g, part s: grid x is g * S + s, see launch_grid), its channel block and its rows
    [lo, hi)."""
    task = tl.program_id(0).to(tl.int64)
    g = task // S
    s = task - g * S
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    lo, hi = _part_rows(offsets_ptr, g, s, S, N, BATCH)
    return task, g, cols, cols < C, lo, hi


@triton.jit
def _part_rows(offsets_ptr, g, s, S, N, BATCH: tl.constexpr):
    if BATCH:
        begin = N * 0
        end = N * 1
    else:  # clamped into [0, N], begin <= end: corrupt offsets never read outside x (as the CUDA kernel)
        begin = tl.minimum(tl.maximum(tl.load(offsets_ptr + g).to(tl.int64), 0), N)
        end = tl.minimum(tl.maximum(tl.load(offsets_ptr + g + 1).to(tl.int64), begin), N)
    n = end - begin
    return begin + (n * s) // S, begin + (n * (s + 1)) // S


@triton.autotune(configs=_CONFIGS, key=["C", "BATCH", "HAS_B", "GELU"], prune_configs_by=_FP64)
@triton.jit
def _sums_kernel(a_ptr, b_ptr, offsets_ptr, s_ab_ptr, s_a_ptr, N, C, S,
                 BATCH: tl.constexpr, HAS_B: tl.constexpr, GELU: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    task, g, cols, cmask, lo, hi = _program_part(offsets_ptr, N, C, S, BATCH, BLOCK_C)
    acc_ab = tl.zeros((BLOCK_C,), dtype=ACC)
    acc_a = tl.zeros((BLOCK_C,), dtype=ACC)
    for r0 in range(lo, hi, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        m = (rows < hi)[:, None] & cmask[None, :]
        off = rows[:, None] * C + cols[None, :]
        av = tl.load(a_ptr + off, mask=m, other=0.0).to(ACC)
        if HAS_B:
            bv = tl.load(b_ptr + off, mask=m, other=0.0).to(ACC)
            if GELU:  # GELU(0) = 0: masked lanes still add nothing
                bv = _gelu(bv)
            acc_ab += tl.sum(av * bv, axis=0)
            acc_a += tl.sum(av, axis=0)
        else:
            if GELU:
                av = _gelu(av)
            acc_ab += tl.sum(av * av, axis=0)
    tl.store(s_ab_ptr + task * C + cols, acc_ab, mask=cmask)
    if HAS_B:
        tl.store(s_a_ptr + task * C + cols, acc_a, mask=cmask)


@triton.autotune(configs=_CONFIGS, key=["C", "BATCH", "HAS_B", "GELU"], prune_configs_by=_FP64)
@triton.jit
def _apply_kernel(a_ptr, b_ptr, s_ptr, t_ptr, offsets_ptr, out_ptr, N, C, S,
                  BATCH: tl.constexpr, HAS_B: tl.constexpr, GELU: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    task, g, cols, cmask, lo, hi = _program_part(offsets_ptr, N, C, S, BATCH, BLOCK_C)
    sv = tl.load(s_ptr + g * C + cols, mask=cmask, other=0.0).to(ACC)
    if HAS_B:
        tv = tl.load(t_ptr + g * C + cols, mask=cmask, other=0.0).to(ACC)
    else:  # beta in its own dtype
        tv = tl.load(t_ptr + cols, mask=cmask, other=0.0).to(ACC)
    for r0 in range(lo, hi, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        m = (rows < hi)[:, None] & cmask[None, :]
        off = rows[:, None] * C + cols[None, :]
        av = tl.load(a_ptr + off, mask=m, other=0.0).to(ACC)
        if HAS_B:  # backward: a = grad_out, b = the op's input
            bv = tl.load(b_ptr + off, mask=m, other=0.0).to(ACC)
            if GELU:
                v = (av * sv[None, :] + _gelu(bv) * tv[None, :]) * _gelu_grad(bv)
            else:
                v = av * sv[None, :] + bv * tv[None, :]
        else:
            if GELU:
                av = _gelu(av)
            v = av * sv[None, :] + tv[None, :]
        tl.store(out_ptr + off, v.to(out_ptr.dtype.element_ty), mask=m)


MAX_GRID_X = 2**31 - 1  # CUDA's grid-x limit (y and z: 65,535)
_STATS_BLOCK = 512  # channels per step of the statistics kernels (C up to 3072 at tiny's last stage)


@triton.jit
def _fwd_stats_kernel(part_ptr, gamma_ptr, gnorm_ptr, scale_ptr, S, C, eps, ACC: tl.constexpr,
                      BLOCK_C: tl.constexpr):
    """gnorm[g] = sqrt(sum_s part[g, s]); scale[g] = 1 + gamma * gnorm[g] / (mean_c gnorm[g] + eps)."""
    g = tl.program_id(0).to(tl.int64)
    total = tl.zeros((BLOCK_C,), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        acc = tl.zeros((BLOCK_C,), dtype=ACC)
        for k in range(0, S):  # the parts in order: deterministic
            acc += tl.load(part_ptr + (g * S + k) * C + cols, mask=cmask, other=0.0)
        gn = tl.sqrt(acc)
        tl.store(gnorm_ptr + g * C + cols, gn, mask=cmask)
        total += gn
    denom = tl.sum(total, axis=0) / tl.maximum(C, 1) + eps
    tl.debug_barrier()  # gnorm was stored by other threads of this program: make it visible before reading it back
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        gn = tl.load(gnorm_ptr + g * C + cols, mask=cmask, other=0.0)
        ga = tl.load(gamma_ptr + cols, mask=cmask, other=0.0).to(ACC)
        tl.store(scale_ptr + g * C + cols, 1.0 + ga * (gn / denom), mask=cmask)


@triton.jit
def _bwd_stats_kernel(s1p_ptr, s0p_ptr, gamma_ptr, gnorm_ptr, scale_ptr, coef_ptr, dg_ptr, db_ptr, S, C, eps,
                      ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per group g, from the parts' sums s1 = sum g*x and s0 = sum g: scale = 1 + gamma Nx, the coefficient
    dL/dG / G of x in dx (0 where G = 0), and the group's terms of dgamma (s1 Nx) and dbeta (s0)."""
    g = tl.program_id(0).to(tl.int64)
    sum_g = tl.zeros((BLOCK_C,), dtype=ACC)
    sum_ag = tl.zeros((BLOCK_C,), dtype=ACC)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        s1 = tl.zeros((BLOCK_C,), dtype=ACC)
        s0 = tl.zeros((BLOCK_C,), dtype=ACC)
        for k in range(0, S):
            s1 += tl.load(s1p_ptr + (g * S + k) * C + cols, mask=cmask, other=0.0)
            s0 += tl.load(s0p_ptr + (g * S + k) * C + cols, mask=cmask, other=0.0)
        gn = tl.load(gnorm_ptr + g * C + cols, mask=cmask, other=0.0)
        ga = tl.load(gamma_ptr + cols, mask=cmask, other=0.0).to(ACC)
        tl.store(dg_ptr + g * C + cols, s1, mask=cmask)  # s1 for now; s1 * Nx below
        tl.store(db_ptr + g * C + cols, s0, mask=cmask)
        sum_g += gn
        sum_ag += ga * s1 * gn
    denom = tl.sum(sum_g, axis=0) / tl.maximum(C, 1) + eps
    ag = tl.sum(sum_ag, axis=0)
    tl.debug_barrier()  # dg (s1 for now) was stored by other threads of this program: visible before reading it back
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        cmask = cols < C
        s1 = tl.load(dg_ptr + g * C + cols, mask=cmask, other=0.0)
        gn = tl.load(gnorm_ptr + g * C + cols, mask=cmask, other=0.0)
        ga = tl.load(gamma_ptr + cols, mask=cmask, other=0.0).to(ACC)
        nx = gn / denom
        # dL/dNx = gamma s1; dL/dG[k] = gamma_k s1_k / D - sum_c gamma_c s1_c G_c / (C D^2); dG/dx = x / G
        dldg = ga * s1 / denom - ag / (tl.maximum(C, 1) * denom * denom)
        tl.store(coef_ptr + g * C + cols, tl.where(gn > 0, dldg / tl.where(gn > 0, gn, 1.0), 0.0), mask=cmask)
        tl.store(scale_ptr + g * C + cols, 1.0 + ga * nx, mask=cmask)
        tl.store(dg_ptr + g * C + cols, s1 * nx, mask=cmask)


def _stats_block(C):
    return min(_STATS_BLOCK, triton.next_power_of_2(max(C, 1)))


def _geometry(x, offsets, batch_stats):
    N, C = x.shape
    G = 1 if batch_stats else offsets.shape[0] - 1
    return N, C, G, parts_per_group(N, G, GRN_ROWS_PER_PART)


def launch_grid(S: int, G: int, C: int, block_c: int) -> tuple[int, int]:
    """(groups x parts, channel blocks): the G * S (group, part) tasks on grid x, whose limit is 2^31 - 1, not on
    y or z (65,535: a batch of 65,536 samples would not launch); the channel blocks, at most a few dozen, on y."""
    if G * S > MAX_GRID_X:
        raise ValueError(f"grn: {G} groups x {S} parts = {G * S} programs exceed the GPU grid limit ({MAX_GRID_X})")
    return G * S, triton.cdiv(C, block_c)


def _grid(S, G, C):
    return lambda meta: launch_grid(S, G, C, meta["BLOCK_C"])


@on_input_device
def forward(x, gamma, beta, offsets, eps: float, batch_stats: bool, gelu: bool = False):
    """``(y, gnorm)`` of GRN(x), or of GRN(GELU(x)) with ``gelu``."""
    assert x.is_contiguous(), "x must be contiguous"
    N, C, G, S = _geometry(x, offsets, batch_stats)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = torch.empty_like(x)
    part = torch.empty(G * S, C, dtype=acc, device=x.device)
    ACC = acc_dtype(x.dtype)
    if C > 0:
        _sums_kernel[_grid(S, G, C)](x, x, offsets, part, part, N, C, S, BATCH=batch_stats, HAS_B=False, GELU=gelu,
                                     ACC=ACC)
    gnorm = torch.empty(G, C, dtype=acc, device=x.device)
    scale = torch.empty(G, C, dtype=acc, device=x.device)
    if C > 0:
        _fwd_stats_kernel[(G,)](part, gamma.contiguous(), gnorm, scale, S, C, float(eps), ACC=ACC,
                                BLOCK_C=_stats_block(C))
        _apply_kernel[_grid(S, G, C)](x, x, scale, beta.contiguous(), offsets, y, N, C, S,
                                      BATCH=batch_stats, HAS_B=False, GELU=gelu, ACC=ACC)
    return y, gnorm


@on_input_device
def backward(grad_out, x, gamma, gnorm, offsets, eps: float, batch_stats: bool, output_mask=(True, True, True),
             gelu: bool = False):
    """``(dx, dgamma, dbeta)``; those whose ``output_mask`` entry is False are not computed (empty tensors).
    With ``gelu``, x is GELU's input and dx its gradient (GRN(GELU(x)))."""
    need_dx, need_dgamma, need_dbeta = output_mask
    grad_out = grad_out.contiguous()
    N, C, G, S = _geometry(x, offsets, batch_stats)
    acc = gnorm.dtype
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)
    s1p = torch.empty(G * S, C, dtype=acc, device=x.device)
    s0p = torch.empty(G * S, C, dtype=acc, device=x.device)
    ACC = acc_dtype(x.dtype)
    if C > 0:
        _sums_kernel[_grid(S, G, C)](grad_out, x, offsets, s1p, s0p, N, C, S, BATCH=batch_stats, HAS_B=True,
                                     GELU=gelu, ACC=ACC)
    scale = torch.empty(G, C, dtype=acc, device=x.device)
    coef = torch.empty(G, C, dtype=acc, device=x.device)
    dg = torch.empty(G, C, dtype=acc, device=x.device)  # every element written when C > 0
    db = torch.empty(G, C, dtype=acc, device=x.device)
    if C > 0:
        _bwd_stats_kernel[(G,)](s1p, s0p, gamma.contiguous(), gnorm.contiguous(), scale, coef, dg, db, S, C,
                                float(eps), ACC=ACC,
                                BLOCK_C=_stats_block(C))
    if C > 0 and need_dx:
        _apply_kernel[_grid(S, G, C)](grad_out, x, scale, coef, offsets, dx, N, C, S, BATCH=batch_stats, HAS_B=True,
                                      GELU=gelu, ACC=ACC)
    # sums over groups: torch's reduction along a dim is deterministic (no atomics)
    dgamma = dg.sum(0).to(gamma.dtype) if need_dgamma else gamma.new_empty(0)
    dbeta = db.sum(0).to(gamma.dtype) if need_dbeta else gamma.new_empty(0)
    return dx, dgamma, dbeta
