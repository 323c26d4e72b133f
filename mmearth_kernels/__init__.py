"""mmearth_kernels: the sparse encoder's kernels (masked depthwise conv, GRN and their fusions) as torch ops, for
MMEarth's MP-MAE. The ops are listed by ``python -m mmearth_kernels.info`` (and ``mmearth_kernels.ops.OPS``).

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
from . import ops
from .ops import *  # noqa: F403  (IMPLS, available_impls and every op's public function, by its name)

EXTENSION_LOADED = _extension.LOADED

__version__ = "0.1.0"
__all__ = ["EXTENSION_LOADED", "SparseLayout", "build_layout", "built_with_cuda", "from_dense", "layout_from_active",
           "num_kept", "random_patch_mask", "to_dense", *ops.__all__]
