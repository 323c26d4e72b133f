"""Public ops. Each takes ``impl=`` ("auto", "ref", "cpu", "cuda")."""

from ._impl import IMPLS, available_impls
from .gelu_grn import gelu_grn
from .grn import grn
from .sparse_dwconv import sparse_dwconv2d

__all__ = ["IMPLS", "available_impls", "gelu_grn", "grn", "sparse_dwconv2d"]
