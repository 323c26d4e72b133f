"""How the encoder's spatial operations are done on one representation of the visible sites.

The encoder (:mod:`.convnextv2`) is written once: its stem, downsampling layers and blocks call a
per-forward backend object for every operation that depends on how the sites are stored. A backend
is built for one batch (its mask) and offers:

* ``input(x)``: the representation of the image ``[B, C, H, W]`` (only the kept pixels, in effect);
* ``conv_same(h, conv)``: the stem's submanifold 3x3 conv at the input resolution;
* ``map(h, fn, level)``: a per-site function (LayerNorm, GELU) of the features ``[..., C]``;
* ``strided(h, conv, src, dst, depthwise)``: a kernel = stride conv from level ``src`` to ``dst``;
* ``dwconv(h, conv, level)``: the blocks' depthwise conv, returning per-site features ``[..., C]``;
  ``dwconv_ln(h, conv, norm, level)``: that, then the block's LayerNorm (by default the two in turn; one fused
  op in ``sparse-fused``);
* ``grn(f, grn, level)``: GRN of those features; ``gelu_grn(f, grn, level)``: GRN(GELU(f)), by default
  the two in turn (:class:`.backend_base.Backend`), one fused op in ``sparse-fused``;
* ``add(h, f, level)``: the residual ``h + f`` at the active sites;
* ``densify(h)``: the ``[B, C, g, g]`` output, zero at masked positions.

Levels: ``"in"`` is the input resolution, 0..3 the four stages. Adding a backend is one new class
(``minkowski.py`` holds the MinkowskiEngine one) and one line in :data:`BACKENDS`.
"""

from __future__ import annotations

import torch

from .. import layout as packed
from ..ops import gelu_grn as gelu_grn_op
from ..ops import grn as grn_op
from ..ops import _impl, sparse_dwconv2d, sparse_dwconv2d_ln
from . import sparse_layers
from .backend_base import Backend


def grn_dense(y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, stats: str = "per_sample",
              eps: float = 1e-6) -> torch.Tensor:
    """GRN on ``[B, H, W, C]`` in plain PyTorch, as the dense ConvNeXt V2 computes it (sites that must not
    count are zero, so they add nothing to the L2 norm): the dense backends' GRN, what a user without this
    library runs. ``stats="batch"`` pools over the whole batch (the released MinkowskiGRN)."""
    gx = torch.linalg.vector_norm(y, dim=(1, 2) if stats == "per_sample" else (0, 1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + eps)
    gamma, beta = gamma.to(y.dtype), beta.to(y.dtype)
    return gamma * (y * nx) + beta + y


def _cf(h: torch.Tensor, fn) -> torch.Tensor:
    """A per-site function of a channels-first ``[B, C, H, W]`` map (applied over C)."""
    return fn(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Dense(Backend):
    """The full map, channels_last. ``remask=True``: FCMAE's exact emulation, the mask re-applied after
    every spatial op and GRN statistics over active sites; False (``dense-plain``): only the input is
    masked, a plain ConvNeXt V2 (not equivalent: masked sites fill up after the first conv)."""

    def __init__(self, encoder, x: torch.Tensor, mask: torch.Tensor, remask: bool = True):
        g, r_in = encoder.grid, encoder.img_size // encoder.grid
        self.stats = encoder.grn_stats
        self.visible = (~mask).repeat_interleave(r_in, 1).repeat_interleave(r_in, 2)[:, None]  # [B, 1, H, W]
        self.masks = {}
        if remask:
            self.masks["in"] = self.visible.to(x.dtype)
            for i in range(4):
                r = (g * 8 >> i) // g
                a = (~mask).repeat_interleave(r, 1).repeat_interleave(r, 2)[:, None].to(x.dtype)
                self.masks[i] = a.contiguous(memory_format=torch.channels_last)

    def _m(self, t, level):
        a = self.masks.get(level)
        return t if a is None else t * a

    def input(self, x):
        # masked pixels are absent from the start: selected away, not multiplied (NaN * 0 is NaN)
        return torch.where(self.visible, x, x.new_zeros(())).contiguous(memory_format=torch.channels_last)

    def conv_same(self, h, conv):
        return self._m(conv(h), "in")

    def map(self, h, fn, level):
        return self._m(_cf(h, fn), level)

    def strided(self, h, conv, src, dst, depthwise=False):
        return self._m(conv(h), dst)

    def dwconv(self, h, conv, level):
        return conv(h).permute(0, 2, 3, 1)  # the input is already zero at masked sites

    def grn(self, f, grn, level):
        a = self.masks.get(level)  # statistics over active sites only: masked rows (GELU of a bias) zeroed first
        return grn_dense(f if a is None else f * a.permute(0, 2, 3, 1), grn.gamma, grn.beta, self.stats)

    def add(self, h, f, level):
        return h + self._m(f.permute(0, 3, 1, 2), level)

    def densify(self, h):
        return h


class Plain(Backend):
    """A dense map with nothing masked and per-sample GRN through this library's op: the MP-MAE decoder block."""

    def __init__(self, impl: str = "auto"):
        self.impl = impl

    def dwconv(self, h, conv, level=None):
        return conv(h).permute(0, 2, 3, 1)

    def grn(self, f, grn, level=None):
        return grn_op(f.contiguous(), grn.gamma, grn.beta, impl=self.impl)

    def add(self, h, f, level=None):
        return h + f.permute(0, 3, 1, 2)


class Sparse(Backend):
    """The packed layout end to end: ``[N, C]`` rows of the visible sites, one layout per resolution built
    once per forward with static shapes; this library's sparse depthwise conv and GRN."""

    def __init__(self, encoder, x: torch.Tensor, mask: torch.Tensor, kept: int | None):
        self.impl, self.stats, self.reduction = encoder.impl, encoder.grn_stats, encoder.reduction
        lay_in, *lay = encoder.layouts(mask, kept)
        self.lay = {"in": lay_in, 0: lay[0], 1: lay[1], 2: lay[2], 3: lay[3]}

    def input(self, x):
        return packed.from_dense(x, self.lay["in"])

    def conv_same(self, h, conv):
        return sparse_layers.submanifold_conv(h, conv.weight, conv.bias, self.lay["in"])

    def map(self, h, fn, level):
        return fn(h)

    def strided(self, h, conv, src, dst, depthwise=False):
        s = conv.stride[0]
        # k = s = 1 (the stem at 56/8) maps every row to itself: no gather
        children = sparse_layers.child_rows(self.lay[dst], self.lay[src], s) if s > 1 else None
        return sparse_layers.strided_conv(h, conv.weight, conv.bias, children, depthwise=depthwise)

    def dwconv(self, h, conv, level):
        return sparse_dwconv2d(h.contiguous(), conv.weight, conv.bias, self.lay[level], impl=self.impl)

    def grn(self, f, grn, level):
        return grn_op(f.contiguous(), grn.gamma, grn.beta, self.lay[level], stats=self.stats, impl=self.impl)

    def add(self, h, f, level):
        return h + f

    def densify(self, h):
        return packed.to_dense(h, self.lay[3])


class SparseFused(Sparse):
    """``sparse`` with the second-generation kernels: GELU + GRN in one op (C++ on CPU, Triton on GPU: a pass over
    the 4C-wide tensor less each way, docs/bytes-model.md), the depthwise conv and its LayerNorm in one op, and,
    where Triton runs, the patch-tiled depthwise conv. Same parameters and results as ``sparse`` (tested; the C++
    GELU is a polynomial within ~2e-7)."""

    def _tiling(self, h, level):
        lay = self.lay[level]
        patches = lay.block is not None and _impl.resolve("sparse_dwconv2d", self.impl, h.device) == "triton"
        return "patches" if patches else "rows"

    def dwconv(self, h, conv, level):
        return sparse_dwconv2d(h.contiguous(), conv.weight, conv.bias, self.lay[level], impl=self.impl,
                               tiling=self._tiling(h, level))

    def dwconv_ln(self, h, conv, norm, level):
        if norm.weight is None or norm.bias is None or tuple(norm.normalized_shape) != (h.shape[-1],):
            return super().dwconv_ln(h, conv, norm, level)  # not the block's affine LayerNorm over C
        return sparse_dwconv2d_ln(h.contiguous(), conv.weight, conv.bias, norm.weight, norm.bias, self.lay[level],
                                  eps=norm.eps, impl=self.impl, tiling=self._tiling(h, level))

    def gelu_grn(self, f, grn, level):
        return gelu_grn_op(f.contiguous(), grn.gamma, grn.beta, self.lay[level], stats=self.stats, impl=self.impl)


def _minkowski(encoder, x, mask, kept):
    from .minkowski import Minkowski  # optional engine: imported only when used

    return Minkowski(encoder, x, mask, kept)


# name -> factory(encoder, x, mask, kept)
BACKENDS = {
    "dense": lambda enc, x, mask, kept: Dense(enc, x, mask, remask=True),
    "sparse": Sparse,
    "sparse-fused": SparseFused,
    "minkowski": _minkowski,
    "dense-plain": lambda enc, x, mask, kept: Dense(enc, x, mask, remask=False),
}
