"""The base of every encoder backend (the interface is described in :mod:`.backends`): compositions of the
backend's own operations that a backend may replace with a fused kernel. Its own module so that
``minkowski.py`` can derive from it without importing ``backends.py`` (which imports it lazily)."""

from __future__ import annotations

import torch.nn.functional as F


class Backend:
    def dwconv_ln(self, h, conv, norm, level):
        """``norm(dwconv(h))``: a block's depthwise conv and its LayerNorm; ``sparse-fused`` does it in one kernel."""
        return norm(self.dwconv(h, conv, level))

    def gelu_grn(self, f, grn, level):
        """``GRN(GELU(f))`` of a block's hidden features; ``sparse-fused`` does it in one kernel."""
        return self.grn(F.gelu(f), grn, level)
