"""ConvNeXt V2 encoder for FCMAE / MMEarth MP-MAE with swappable backends on one set of weights.

``backend=`` chooses how the spatial ops run on the visible sites (:mod:`.backends` declares each one, with what
it runs and when to use it, in the table of :mod:`.registry`; ``python -m mmearth_kernels.info`` lists them).
The default is the packed sparse layout with this library's ops; the reference is the exact masked dense
emulation in plain PyTorch (the mask re-applied after every spatial op, GRN statistics over active sites only).
All exact backends compute the same function: the parity tests compare every one with the reference.

All read the same parameters (``state_dict`` keys do not depend on the backend), so a model can
be switched at runtime: ``model.backend = "dense"``.

Geometry: ``img_size`` / ``patch_size`` = the mask grid g (= the last stage's resolution); the stem
reduces the image by ``patch_size // 8`` so the stages run at 8g, 4g, 2g, g (56..7 for MMEarth's
56/8 and 112/16 and FCMAE's 224/32).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import layout as packed
from ..ops import IMPLS
from ..masking import check_mask, num_kept  # noqa: F401  (num_kept re-exported for callers building masks)
from .. import args
from .backends import BACKENDS, Plain

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

    def forward(self, h, backend=None, level=None):
        """``h`` in the backend's representation (:mod:`.backends`); without one, a plain dense block on
        ``[B, C, H, W]`` (nothing masked, GRN per sample): the MP-MAE decoder block."""
        be = Plain() if backend is None else backend
        f = be.dwconv_ln(h, self.dwconv, self.norm, level)        # per-site features [..., C]
        f = self.pwconv2(be.gelu_grn(self.pwconv1(f), self.grn, level))
        return be.add(h, f, level)


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

    def forward(self, h, be):
        if self.kind == "mmearth":
            h = be.map(be.conv_same(h, self.conv), lambda f: F.gelu(self.norm1(f)), "in")
            return be.map(be.strided(h, self.dwconv, "in", 0, depthwise=True), self.norm2, 0)
        return be.map(be.strided(h, self.conv, "in", 0), self.norm, 0)


class Downsample(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm = nn.LayerNorm(cin, eps=LN_EPS)
        self.conv = nn.Conv2d(cin, cout, 2, stride=2)

    def forward(self, h, be, level: int):
        return be.strided(be.map(h, self.norm, level - 1), self.conv, level - 1, level)


class ConvNeXtV2Encoder(nn.Module):
    def __init__(self, size: str = "atto", in_chans: int = 12, img_size: int = 56, patch_size: int = 8,
                 stem: str = "mmearth", backend: str = "sparse", grn_stats: str = "per_sample", impl: str = "auto",
                 depths=None, dims=None):
        super().__init__()
        if (depths is None) != (dims is None):
            raise ValueError(f"depths and dims go together (give both, or neither and a size), got depths={depths!r}, "
                             f"dims={dims!r}")
        if depths is None:
            depths, dims = SIZES[args.choice("size", size, SIZES)]
        depths, dims = args.ints("depths", depths, 4), args.ints("dims", dims, 4)
        in_chans = args.positive_int("in_chans", in_chans)
        args.choice("stem", stem, STEMS)
        patch_size = args.positive_int("patch_size", patch_size, "a positive multiple of 8")
        if patch_size % 8:
            raise ValueError(f"patch_size must be a positive multiple of 8, got {patch_size}")
        img_size = args.positive_int("img_size", img_size, f"a positive multiple of patch_size {patch_size}")
        if img_size % patch_size:
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
        args.choice("backend", self.backend, tuple(BACKENDS))
        args.choice("grn_stats", self.grn_stats, GRN_STATS)
        args.choice("impl", self.impl, IMPLS)

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
        weights = self.stem.conv.weight.dtype
        if x.dtype != weights and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x is {x.dtype} but the encoder's weights are {weights}: every backend takes x in the "
                            f"weights' dtype (float32, float64, float16 or bfloat16: convert the model with "
                            f"model.to(dtype)), or any floating dtype inside torch.autocast")
        B, g = x.shape[0], self.grid
        if mask is None:
            mask = torch.zeros(B, g, g, dtype=torch.bool, device=x.device)
            kept = g * g
        mask = check_mask(mask, B, g, kept)
        if mask.device != x.device:
            raise ValueError(f"mask is on {mask.device} but x is on {x.device}")
        be = BACKENDS[self.backend](self, x, mask, kept)
        h = self.stem(be.input(x), be)
        for i in range(4):
            if i > 0:
                h = self.downsample[i](h, be, i)
            for blk in self.stages[i]:
                h = blk(h, be, i)
        return be.densify(h)

    def layouts(self, mask: torch.Tensor, kept: int | None):
        """Packed layouts of the input resolution and the four stages, each built once per step (at 56/8
        the input and stage-1 resolutions are the same: one layout serves both)."""
        g = self.grid
        built: dict[int, packed.SparseLayout] = {}
        for r in [self.img_size] + [g * 8 >> i for i in range(4)]:
            if r not in built:
                built[r] = packed.build_layout(mask, r, kept)
        return [built[self.img_size]] + [built[g * 8 >> i] for i in range(4)]


def encoder(size: str = "atto", **kwargs) -> ConvNeXtV2Encoder:
    """``encoder("atto", img_size=56, patch_size=8, backend="sparse")``; see :class:`ConvNeXtV2Encoder`."""
    return ConvNeXtV2Encoder(size, **kwargs)
