"""mmearth_kernels: sparse masked depthwise conv and GRN as torch ops, for MMEarth's MP-MAE.

Quick start::

    import torch, mmearth_kernels as mk
    mask = mk.random_patch_mask(8, 7, 0.6)                  # [B, 7, 7], True = masked
    lay = mk.build_layout(mask, 56, mk.num_kept(49, 0.6))   # stage-1 layout, 8x8 blocks per patch
    x = torch.randn(lay.num_rows, 40)                       # packed active rows
    y = mk.sparse_dwconv2d(x, torch.randn(40, 1, 7, 7), None, lay)
"""

from . import _extension
from ._extension import built_with_cuda
from .layout import SparseLayout, build_layout, from_dense, layout_from_active, to_dense
from .masking import num_kept, random_patch_mask
from .ops import IMPLS, available_impls, gelu_grn, grn, sparse_dwconv2d, sparse_dwconv2d_ln

EXTENSION_LOADED = _extension.LOADED

__version__ = "0.1.0"
__all__ = [
    "EXTENSION_LOADED",
    "IMPLS",
    "SparseLayout",
    "available_impls",
    "build_layout",
    "built_with_cuda",
    "from_dense",
    "gelu_grn",
    "grn",
    "layout_from_active",
    "num_kept",
    "random_patch_mask",
    "sparse_dwconv2d",
    "sparse_dwconv2d_ln",
    "to_dense",
]
