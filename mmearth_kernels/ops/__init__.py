"""Public ops. Each takes ``impl=`` ("auto", "ref", "cpu", "cuda")."""

from ._impl import IMPLS, available_impls
from .grn import grn
from .sparse_dwconv import sparse_dwconv2d

__all__ = ["IMPLS", "available_impls", "grn", "sparse_dwconv2d"]
