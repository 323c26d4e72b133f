"""Triton kernels for GRN on packed rows grouped by sample.

The rows of each group (a sample, or the whole batch with batch statistics) are cut into S parts
by the same rule as the C++ kernels; a program owns (part, group, channel block).

* ``_sums_kernel``: column sums over a part: ``x^2`` (forward) or ``g*x`` and ``g`` (backward).
* ``_apply_kernel``: ``out = a * s[group] + (b * t[group] if HAS_B else t)`` (forward: a = x,
  t = beta; backward: a = grad, b = x, t = coef).

The per-group statistics between the two passes are tiny ``[groups, C]`` torch ops. So the
forward reads x twice and writes y once, the backward reads (g, x) twice and writes dx once.

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
from . import acc_dtype, autotune_configs


_CONFIGS = autotune_configs([
    triton.Config({"BLOCK_R": 32, "BLOCK_C": 128}, num_warps=4),
    triton.Config({"BLOCK_R": 16, "BLOCK_C": 256}, num_warps=4),
    triton.Config({"BLOCK_R": 64, "BLOCK_C": 64}, num_warps=4),
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
def _part_rows(offsets_ptr, g, s, S, N, BATCH: tl.constexpr):
    if BATCH:
        begin = N * 0
        end = N * 1
    else:  # clamped into [0, N], begin <= end: corrupt offsets never read outside x (as the CUDA kernel)
        begin = tl.minimum(tl.maximum(tl.load(offsets_ptr + g).to(tl.int64), 0), N)
        end = tl.minimum(tl.maximum(tl.load(offsets_ptr + g + 1).to(tl.int64), begin), N)
    n = end - begin
    return begin + (n * s) // S, begin + (n * (s + 1)) // S


@triton.autotune(configs=_CONFIGS, key=["C", "BATCH", "HAS_B", "GELU"])
@triton.jit
def _sums_kernel(a_ptr, b_ptr, offsets_ptr, s_ab_ptr, s_a_ptr, N, C, S,
                 BATCH: tl.constexpr, HAS_B: tl.constexpr, GELU: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    lo, hi = _part_rows(offsets_ptr, g, s, S, N, BATCH)
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
    task = g * S + s
    tl.store(s_ab_ptr + task * C + cols, acc_ab, mask=cmask)
    if HAS_B:
        tl.store(s_a_ptr + task * C + cols, acc_a, mask=cmask)


@triton.autotune(configs=_CONFIGS, key=["C", "BATCH", "HAS_B", "GELU"])
@triton.jit
def _apply_kernel(a_ptr, b_ptr, s_ptr, t_ptr, offsets_ptr, out_ptr, N, C, S,
                  BATCH: tl.constexpr, HAS_B: tl.constexpr, GELU: tl.constexpr, ACC: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    s = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(2).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    lo, hi = _part_rows(offsets_ptr, g, s, S, N, BATCH)
    sv = tl.load(s_ptr + g * C + cols, mask=cmask, other=0.0)
    if HAS_B:
        tv = tl.load(t_ptr + g * C + cols, mask=cmask, other=0.0)
    else:
        tv = tl.load(t_ptr + cols, mask=cmask, other=0.0)
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


def _geometry(x, offsets, batch_stats):
    N, C = x.shape
    G = 1 if batch_stats else offsets.shape[0] - 1
    return N, C, G, parts_per_group(N, G, GRN_ROWS_PER_PART)


def _grid(S, G, C):
    return lambda meta: (S, G, triton.cdiv(C, meta["BLOCK_C"]))


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
    gnorm = part.view(G, S, C).sum(1).sqrt()
    denom = gnorm.mean(dim=-1, keepdim=True) + eps if C > 0 else gnorm.new_full((G, 1), eps)
    scale = (1 + gamma.to(acc) * (gnorm / denom)).contiguous()
    if C > 0:
        _apply_kernel[_grid(S, G, C)](x, x, scale, beta.to(acc).contiguous(), offsets, y, N, C, S,
                                      BATCH=batch_stats, HAS_B=False, GELU=gelu, ACC=ACC)
    return y, gnorm


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
    s1 = s1p.view(G, S, C).sum(1)
    s0 = s0p.view(G, S, C).sum(1)
    ga = gamma.to(acc)
    denom = gnorm.mean(dim=-1, keepdim=True) + eps if C > 0 else gnorm.new_full((G, 1), eps)
    nx = gnorm / denom
    a = ga * s1                                                      # dL/dNx
    dldg = a / denom - (a * gnorm).sum(-1, keepdim=True) / (max(C, 1) * denom * denom)
    coef = torch.where(gnorm > 0, dldg / torch.where(gnorm > 0, gnorm, 1), 0).contiguous()  # G = 0: no gradient
    scale = (1 + ga * nx).contiguous()
    if C > 0 and need_dx:
        _apply_kernel[_grid(S, G, C)](grad_out, x, scale, coef, offsets, dx, N, C, S, BATCH=batch_stats, HAS_B=True,
                                      GELU=gelu, ACC=ACC)
    dgamma = (s1 * nx).sum(0).to(gamma.dtype) if need_dgamma else gamma.new_empty(0)
    dbeta = s0.sum(0).to(gamma.dtype) if need_dbeta else gamma.new_empty(0)
    return dx, dgamma, dbeta
