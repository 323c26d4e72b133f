"""ConvNeXt V2 encoder for FCMAE / MMEarth MP-MAE with swappable backends on one set of weights.

* ``backend="dense"``: masked dense emulation in plain PyTorch (channels_last), exactly FCMAE's
  sparse semantics: the mask is re-applied after every spatial op and GRN statistics are taken
  over active sites only.
* ``backend="sparse"``: the packed layout end to end (stem to the 7x7 output) with this library's
  ops: submanifold 3x3 stem conv and strided convs as gathers + GEMM, ``sparse_dwconv2d`` and
  ``grn`` kernels; densified into an explicitly shaped ``[B, C, g, g]``.
* ``backend="minkowski"``: the upstream engine (optional; :mod:`.minkowski`).
* ``backend="dense-plain"``: a plain ConvNeXt V2 with only the input masked, as upstream's
  ``--sparse False``. **Not** equivalent to the others (masked sites fill up after the first
  spatial op and enter every GRN statistic); it is the cheapest dense step, the baseline a user
  would pick instead of a sparse encoder.

Both read the same parameters (``state_dict`` keys do not depend on the backend), so a model can
be switched at runtime: ``model.backend = "dense"``.

Geometry: ``img_size`` / ``patch_size`` = the mask grid g (= the last stage's resolution); the stem
reduces the image by ``patch_size // 8`` so the stages run at 8g, 4g, 2g, g (56..7 for MMEarth's
56/8 and 112/16 and FCMAE's 224/32).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import layout as L
from ..masking import check_mask, num_kept  # noqa: F401  (num_kept re-exported for callers building masks)
from ..ops import grn, sparse_dwconv2d
from . import sparse_layers as S

SIZES = {
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320)),
    "femto": ((2, 2, 6, 2), (48, 96, 192, 384)),
    "pico": ((2, 2, 6, 2), (64, 128, 256, 512)),
    "nano": ((2, 2, 8, 2), (80, 160, 320, 640)),
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "large": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "huge": ((3, 3, 27, 3), (352, 704, 1408, 2816)),
}
BACKENDS = ("dense", "sparse", "minkowski", "dense-plain")
STEMS = ("mmearth", "original")
GRN_STATS = ("per_sample", "batch")
LN_EPS = 1e-6


class GRN(nn.Module):
    """GRN parameters in upstream's dense layout ``[1, 1, 1, C]`` (zero-initialised: identity)."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))


class Block(nn.Module):
    """ConvNeXt V2 block: dwconv 7x7 -> LN -> Linear(4C) -> GELU -> GRN -> Linear(C) -> + input."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def mlp(self, y: torch.Tensor, grn_fn) -> torch.Tensor:
        """The per-site part after the dwconv (rows or NHWC), with GRN supplied by the backend."""
        y = F.gelu(self.pwconv1(self.norm(y)))
        return self.pwconv2(grn_fn(y))

    def forward(self, x: torch.Tensor, impl: str = "auto") -> torch.Tensor:
        """The plain dense block on ``[B, C, H, W]`` (no mask; GRN per sample over all sites): the
        MP-MAE decoder block."""
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.mlp(y, lambda t: grn(t.contiguous(), self.grn.gamma, self.grn.beta, impl=impl))
        return x + y.permute(0, 3, 1, 2)


class Stem(nn.Module):
    def __init__(self, kind: str, in_chans: int, dim: int, reduction: int):
        super().__init__()
        self.kind = kind
        if kind == "mmearth":  # 3x3 conv at full resolution, LN, GELU, depthwise k = s = patch/8, LN
            self.conv = nn.Conv2d(in_chans, dim, 3, padding=1)
            self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
            self.dwconv = nn.Conv2d(dim, dim, reduction, stride=reduction, groups=dim)
            self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        else:  # FCMAE: patchify conv k = s = patch/8, then LN
            self.conv = nn.Conv2d(in_chans, dim, reduction, stride=reduction)
            self.norm = nn.LayerNorm(dim, eps=LN_EPS)


class Downsample(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm = nn.LayerNorm(cin, eps=LN_EPS)
        self.conv = nn.Conv2d(cin, cout, 2, stride=2)


def grn_dense(y: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, stats: str = "per_sample",
              eps: float = 1e-6) -> torch.Tensor:
    """GRN on ``[B, H, W, C]`` in plain PyTorch, as the dense ConvNeXt V2 computes it (sites that must not
    count are zero, so they add nothing to the L2 norm): the dense backends' GRN, what a user without this
    library runs. ``stats="batch"`` pools over the whole batch (the released MinkowskiGRN)."""
    gx = torch.linalg.vector_norm(y, dim=(1, 2) if stats == "per_sample" else (0, 1, 2), keepdim=True)
    nx = gx / (gx.mean(dim=-1, keepdim=True) + eps)
    gamma, beta = gamma.to(y.dtype), beta.to(y.dtype)
    return gamma * (y * nx) + beta + y


def _ln_cf(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """Channels-first LayerNorm of [B, C, H, W] (per site over C)."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtV2Encoder(nn.Module):
    def __init__(self, size: str = "atto", in_chans: int = 12, img_size: int = 56, patch_size: int = 8,
                 stem: str = "mmearth", backend: str = "sparse", grn_stats: str = "per_sample", impl: str = "auto",
                 depths=None, dims=None):
        super().__init__()
        if depths is None or dims is None:
            if size not in SIZES:
                raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
            depths, dims = SIZES[size]
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if patch_size <= 0 or patch_size % 8:
            raise ValueError(f"patch_size must be a positive multiple of 8, got {patch_size}")
        if img_size <= 0 or img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a positive multiple of patch_size {patch_size}")
        self.depths, self.dims = tuple(depths), tuple(dims)
        self.in_chans, self.img_size, self.patch_size = in_chans, img_size, patch_size
        self.grid = img_size // patch_size
        self.reduction = patch_size // 8
        self.backend, self.grn_stats, self.impl = backend, grn_stats, impl
        self._check_mode()
        self.stem = Stem(stem, in_chans, dims[0], self.reduction)
        self.downsample = nn.ModuleList([nn.Identity()] + [Downsample(dims[i - 1], dims[i]) for i in range(1, 4)])
        self.stages = nn.ModuleList([nn.ModuleList([Block(dims[i]) for _ in range(depths[i])]) for i in range(4)])
        self.init_weights("standard")

    # -- configuration -----------------------------------------------------------------------
    def _check_mode(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.grn_stats not in GRN_STATS:
            raise ValueError(f"grn_stats must be one of {GRN_STATS}, got {self.grn_stats!r}")

    @property
    def out_channels(self) -> int:
        return self.dims[-1]

    def init_weights(self, mode: str = "standard") -> None:
        """``"standard"``: trunc-normal std 0.02 for convs and linears, zero biases. ``"mmearth"``: as
        released, which re-initialises depthwise convs and the blocks' linears with std 1.0 (the
        ``trunc_normal_`` default that FCMAE's ``_init_weights`` applies). GRN starts at zero."""
        if mode not in ("standard", "mmearth"):
            raise ValueError(f"init must be 'standard' or 'mmearth', got {mode!r}")
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                std = 0.02
                if mode == "mmearth":
                    depthwise = isinstance(m, nn.Conv2d) and m.groups == m.in_channels and m.groups > 1
                    in_block_linear = isinstance(m, nn.Linear)
                    std = 1.0 if depthwise or in_block_linear else 0.02
                nn.init.trunc_normal_(m.weight, std=std)  # bounds +-2 (absolute), as timm/upstream
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, kept: int | None = None) -> torch.Tensor:
        """Encode ``x`` ``[B, in_chans, img, img]`` seeing only the kept patches of ``mask``.

        Args:
            mask: ``[B, g, g]`` bool/int, 1 = masked patch (None: nothing masked).
            kept: patches kept in every sample (FCMAE's ``num_kept``); lets the sparse backend build
                its layouts with static shapes. None: read from the mask.
        Returns ``[B, dims[-1], g, g]``, zero at masked positions.
        """
        self._check_mode()
        want = (self.in_chans, self.img_size, self.img_size)
        if not isinstance(x, torch.Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"x must be a floating-point tensor [B, {want[0]}, {want[1]}, {want[2]}], got "
                            f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must be [B, {want[0]}, {want[1]}, {want[2]}] (in_chans, img_size, img_size), "
                             f"got {tuple(x.shape)}")
        B, g = x.shape[0], self.grid
        if mask is None:
            mask = torch.zeros(B, g, g, dtype=torch.bool, device=x.device)
            kept = g * g
        mask = check_mask(mask, B, g, kept)
        if mask.device != x.device:
            raise ValueError(f"mask is on {mask.device} but x is on {x.device}")
        if self.backend in ("dense", "dense-plain"):
            return self._forward_dense(x, mask, remask=self.backend == "dense")
        if self.backend == "minkowski":
            from . import minkowski

            return minkowski.forward(self, x, mask, kept)
        return self._forward_sparse(x, mask, kept)

    def _active(self, mask: torch.Tensor, res: int, dtype) -> torch.Tensor:
        r = res // self.grid
        return (~mask).repeat_interleave(r, 1).repeat_interleave(r, 2)[:, None].to(dtype)

    def _forward_dense(self, x, mask, remask: bool = True):
        """The full map, channels_last. ``remask``: FCMAE's exact emulation (the mask re-applied after every
        spatial op, GRN statistics over active sites); False: ``dense-plain``, only the input masked."""
        g = self.grid
        a_in = self._active(mask, self.img_size, x.dtype)
        # masked pixels are absent from the start: selected away, not multiplied (NaN * 0 is NaN)
        x = torch.where(a_in.bool(), x, x.new_zeros(())).contiguous(memory_format=torch.channels_last)
        if remask:
            a = [self._active(mask, g * 8 >> i, x.dtype).contiguous(memory_format=torch.channels_last)
                 for i in range(4)]
        else:
            a_in, a = None, [None] * 4

        def m(t, act):  # re-mask (exact emulation) or not (plain)
            return t if act is None else t * act

        st = self.stem
        if st.kind == "mmearth":
            x = m(st.conv(x), a_in)
            x = m(F.gelu(_ln_cf(x, st.norm1)), a_in)
            x = m(_ln_cf(st.dwconv(x), st.norm2), a[0])
        else:
            x = m(_ln_cf(st.conv(x), st.norm), a[0])
        for i in range(4):
            if i > 0:
                ds = self.downsample[i]
                x = m(ds.conv(m(_ln_cf(x, ds.norm), a[i - 1])), a[i])
            nhwc = None if a[i] is None else a[i].permute(0, 2, 3, 1)
            for blk in self.stages[i]:
                y = blk.dwconv(x).permute(0, 2, 3, 1)          # input already zero at masked sites
                # GRN statistics over active sites only: masked rows (GELU of the bias) are zeroed first
                y = blk.mlp(y, lambda t, b=blk, mk=nhwc: grn_dense(m(t, mk), b.grn.gamma, b.grn.beta, self.grn_stats))
                x = x + m(y.permute(0, 3, 1, 2), a[i])
        return x

    def layouts(self, mask: torch.Tensor, kept: int | None):
        """Packed layouts of the input resolution and the four stages, each built once per step (at 56/8
        the input and stage-1 resolutions are the same: one layout serves both)."""
        g = self.grid
        built: dict[int, L.SparseLayout] = {}
        for r in [self.img_size] + [g * 8 >> i for i in range(4)]:
            if r not in built:
                built[r] = L.build_layout(mask, r, kept)
        return [built[self.img_size]] + [built[g * 8 >> i] for i in range(4)]

    def _forward_sparse(self, x, mask, kept):
        lay_in, *lay = self.layouts(mask, kept)
        h = L.from_dense(x, lay_in)                                     # [N_in, in_chans]
        st = self.stem
        # reduction 1 (56/8): the stem's k = s = 1 conv maps every row to itself, no gather needed
        stem_rows = S.child_rows(lay[0], lay_in, self.reduction) if self.reduction > 1 else None
        if st.kind == "mmearth":
            h = S.submanifold_conv(h, st.conv.weight, st.conv.bias, lay_in)
            h = F.gelu(st.norm1(h))
            h = st.norm2(S.strided_conv(h, st.dwconv.weight, st.dwconv.bias, stem_rows, depthwise=True))
        else:
            h = st.norm(S.strided_conv(h, st.conv.weight, st.conv.bias, stem_rows))
        stats = self.grn_stats
        for i in range(4):
            if i > 0:
                ds = self.downsample[i]
                h = S.strided_conv(ds.norm(h), ds.conv.weight, ds.conv.bias, S.child_rows(lay[i], lay[i - 1], 2))
            li = lay[i]
            for blk in self.stages[i]:
                y = sparse_dwconv2d(h.contiguous(), blk.dwconv.weight, blk.dwconv.bias, li, impl=self.impl)
                y = blk.mlp(y, lambda t, b=blk, lo=li: grn(t.contiguous(), b.grn.gamma, b.grn.beta, lo, stats=stats,
                                                           impl=self.impl))
                h = h + y
        return L.to_dense(h, lay[3])


def encoder(size: str = "atto", **kwargs) -> ConvNeXtV2Encoder:
    """``encoder("atto", img_size=56, patch_size=8, backend="sparse")``; see :class:`ConvNeXtV2Encoder`."""
    return ConvNeXtV2Encoder(size, **kwargs)
