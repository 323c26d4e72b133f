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
(``minkowski.py`` holds the MinkowskiEngine one) and one :func:`.registry.register_backend` below: the encoder,
the trainer, the benchmarks and the parity tests take it from there.
"""

from __future__ import annotations

import functools

import torch

from .. import layout as packed
from ..ops import gelu_grn as gelu_grn_op
from ..ops import grn as grn_op
from ..ops import sparse_dwconv2d, sparse_dwconv2d_ln
from ..ops.sparse_dwconv import SPARSE_DWCONV2D
from ..reference import grn_dense
from . import sparse_layers
from .backend_base import Backend
from .registry import BACKENDS, BackendSpec, register_backend  # noqa: F401  (BACKENDS: the encoder's choices)


def _cf(h: torch.Tensor, fn) -> torch.Tensor:
    """A per-site function of a channels-first ``[B, C, H, W]`` map (applied over C)."""
    return fn(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Dense(Backend):
    """The full map, channels_last. ``remask=True``: FCMAE's exact emulation, the mask re-applied after
    every spatial op and GRN statistics over active sites; False (``dense-plain``): only the input is
    masked, a plain ConvNeXt V2 (not equivalent: masked sites fill up after the first conv)."""

    def __init__(self, encoder, x: torch.Tensor, mask: torch.Tensor, kept: int | None = None, remask: bool = True):
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
        """Patches where the layout is made of blocks and the kernels chosen have a patch-tiled one of their own."""
        patches = SPARSE_DWCONV2D.impl(SPARSE_DWCONV2D.resolve(self.impl, h.device).kind, "patches")
        return "patches" if self.lay[level].block is not None and patches is not None and patches.fused else "rows"

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


def _minkowski_missing(device) -> str | None:
    from .minkowski import why_unavailable

    return why_unavailable()


register_backend(BackendSpec(
    "dense", Dense, reference=True, baseline=True, all_sites=True,
    summary="exact masked emulation in plain PyTorch",
    runs="the exact masked emulation in plain PyTorch: full maps, the mask re-applied after every spatial op, GRN "
         "statistics over the visible sites",
    use="a reference with no compiled kernels; same function and weights as `sparse`"))
register_backend(BackendSpec(
    "sparse", Sparse, default=True, kernels=True,
    summary="the packed layout of the visible sites with this library's ops",
    runs="the packed layout of the visible sites end to end, with this library's ops (`impl=\"auto\"`)",
    use="the default: pretraining", needs="the compiled kernels for speed (impl='ref' runs without them)"))
register_backend(BackendSpec(
    "sparse-fused", SparseFused, kernels=True,
    summary="sparse with the second-generation fused kernels: GELU+GRN, dwconv+LayerNorm, patch-tiled dwconv",
    runs="`sparse` with the fused ops `gelu_grn` and `sparse_dwconv2d_ln`, and the patch-tiled depthwise conv where "
         "Triton runs",
    use="opt-in: fewer passes over the 4C-wide tensor ([bytes model](docs/bytes-model.md)); the default once a GPU "
        "shows it faster", needs="the compiled kernels for speed (impl='ref' runs without them)"))
register_backend(BackendSpec(
    "minkowski", _minkowski, why_unavailable=_minkowski_missing, slow=True, reproducible=False,
    summary="the upstream MinkowskiEngine layers on the same weights (optional)",
    runs="the upstream MinkowskiEngine layers on the same weights (optional: `scripts/build_minkowski.sh`)",
    use="parity checks against the released engine; not a fast path",
    needs="MinkowskiEngine (`bash scripts/build_minkowski.sh`)"))
register_backend(BackendSpec(
    "dense-plain", functools.partial(Dense, remask=False), exact=False, baseline=True, all_sites=True,
    summary="only the input masked, as upstream --sparse False: not equivalent, the cheapest dense baseline",
    runs="a plain ConvNeXt V2 with only the input masked (upstream's `--sparse False`); **not** equivalent: masked "
         "sites fill up after the first conv",
    use="a baseline only: the cheapest dense step a user could pick instead"))
