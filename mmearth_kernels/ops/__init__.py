"""Public ops. Each takes ``impl=`` ("auto", "ref", "cpu", "cuda")."""

from ._impl import IMPLS, available_impls
from .gelu_grn import gelu_grn
from .grn import grn
from .sparse_dwconv import sparse_dwconv2d
from .sparse_dwconv_ln import sparse_dwconv2d_ln

__all__ = ["IMPLS", "available_impls", "gelu_grn", "grn", "sparse_dwconv2d", "sparse_dwconv2d_ln"]
