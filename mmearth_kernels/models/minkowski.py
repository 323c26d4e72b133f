"""The ``minkowski`` encoder backend: the upstream engine, on this encoder's own parameters.

MinkowskiEngine (ME) is optional and imported only here. ME layers are called through
``torch.func.functional_call`` with our weights mapped to ME's layouts (:mod:`mmearth_kernels.me_layout`), so
gradients land on the shared parameters and the backend can be switched at runtime like the others.
The depthwise 7x7 uses the ConvNeXt-V2 fork's ``MinkowskiDepthwiseConvolution`` when it exists and the
tensors are on CUDA, and stock ``MinkowskiChannelwiseConvolution`` otherwise (same kernel layout; a
Python loop over offsets, so a correctness reference, not a fast path). Build ME for the torch in use
with ``scripts/build_minkowski.sh``.
"""

from __future__ import annotations

import functools
import warnings

import torch

from .. import layout as packed
from ..me_layout import conv_to_me, depthwise_to_me
from ..reference import grn_grouped
from .backend_base import Backend

INSTALL_HINT = ("install it with `bash scripts/build_minkowski.sh` (builds MinkowskiEngine 0.5.4 for the torch in "
                "this environment; PyPI's sdist does not build as is on current Python/torch)")


@functools.lru_cache(maxsize=1)
def engine():
    """The MinkowskiEngine module, or a clear error saying why it cannot be used."""
    try:
        with warnings.catch_warnings():
            if not torch.cuda.is_available():
                # its import warns that it was built CPU-only: on a machine with no GPU that is the only build
                # there is (scripts/build_minkowski.sh), and the warning would be the first line of every CLI's
                # output, errors included. With a GPU it is news (the engine will not use it): let it through.
                warnings.filterwarnings("ignore", message="The MinkowskiEngine was compiled with CPU_ONLY flag")
            import MinkowskiEngine as ME
    except Exception as e:  # a broken install raises ImportError or worse: keep the original message
        raise RuntimeError(f"backend='minkowski' needs MinkowskiEngine, which failed to import "
                           f"({type(e).__name__}: {e}); {INSTALL_HINT}") from e
    return ME


def why_unavailable() -> str | None:
    """None if MinkowskiEngine imports, else why not (with how to install it)."""
    try:
        engine()
        return None
    except RuntimeError as e:
        return str(e)


def available() -> bool:
    return why_unavailable() is None


def _replace(x, features):
    ME = engine()
    return ME.SparseTensor(features, coordinate_map_key=x.coordinate_map_key, coordinate_manager=x.coordinate_manager)


def _conv(x, weight, bias, stride):
    ME = engine()
    cout, cin, k, _ = weight.shape
    mod = ME.MinkowskiConvolution(cin, cout, kernel_size=k, stride=stride, bias=True, dimension=2).to(weight.device)
    kernel = conv_to_me(weight)
    if k == 1:  # ME keeps a kernel of volume 1 as [Cin, Cout]
        kernel = kernel[0]
    return torch.func.functional_call(mod, {"kernel": kernel, "bias": bias.reshape(1, -1)}, (x,))


def _depthwise(x, weight, bias, stride):
    ME = engine()
    c, _, k, _ = weight.shape
    fork = getattr(ME, "MinkowskiDepthwiseConvolution", None)
    if fork is not None and x.F.is_cuda:
        mod = fork(c, kernel_size=k, stride=stride, bias=True, dimension=2)
    else:
        mod = ME.MinkowskiChannelwiseConvolution(c, kernel_size=k, stride=stride, bias=True, dimension=2)
    mod = mod.to(weight.device)
    return torch.func.functional_call(mod, {"kernel": depthwise_to_me(weight), "bias": bias.reshape(1, -1)}, (x,))


def _grn(x, features, grn, stats: str, eps: float = 1e-6):
    """GRN of the rows ``features`` of ME tensor ``x``: batch-global (the released MinkowskiGRN) or per sample
    (rows grouped by the batch index of their coordinate; ME does not keep rows sorted by sample)."""
    if stats == "batch":
        gid, groups = torch.zeros(features.shape[0], dtype=torch.long, device=features.device), 1
    else:
        gid = x.C[:, 0].long().to(features.device)
        groups = int(gid.max()) + 1 if gid.numel() else 1
    return grn_grouped(features, grn.gamma.reshape(-1), grn.beta.reshape(-1), gid, groups, eps)


class Minkowski(Backend):
    """The encoder backend on ME sparse tensors (the interface is in :mod:`.backends`). A block's features
    (from ``dwconv`` to ``add``) are the rows ``.F`` of its input's coordinates."""

    def __init__(self, encoder, x: torch.Tensor, mask: torch.Tensor, kept):
        self.ME = engine()
        self.lay_in = packed.build_layout(mask, encoder.img_size, kept)
        self.B, self.g, self.C = x.shape[0], encoder.grid, encoder.dims[-1]
        self.stats = encoder.grn_stats
        self.empty = self.lay_in.num_rows == 0  # the engine crashes on 0 points; the output is all zeros then

    def input(self, x):
        if self.empty:
            return x.new_zeros(0, x.shape[1])
        lay = self.lay_in
        pos = lay.row_pos.long()
        hw = lay.height * lay.width
        coords = torch.stack([pos // hw, (pos % hw) // lay.width, pos % lay.width], dim=1).int()
        return self.ME.SparseTensor(packed.from_dense(x, lay), coordinates=coords.cpu() if not x.is_cuda else coords,
                                    device=x.device)

    # With nothing visible the features are plain [0, C] tensors: the per-site layers still run on them
    def conv_same(self, h, conv):
        return h.new_zeros(0, conv.out_channels) if self.empty else _conv(h, conv.weight, conv.bias, 1)

    def map(self, h, fn, level):
        return fn(h) if self.empty else _replace(h, fn(h.F))

    def strided(self, h, conv, src, dst, depthwise=False):
        if self.empty:
            return h.new_zeros(0, conv.out_channels)
        return (_depthwise if depthwise else _conv)(h, conv.weight, conv.bias, conv.stride[0])

    def dwconv(self, h, conv, level):
        if self.empty:
            return h
        self._block_input = h  # GRN groups the block's rows by its coordinates (stride 1: the same)
        return _depthwise(h, conv.weight, conv.bias, 1).F

    def grn(self, f, grn, level):
        return f if self.empty else _grn(self._block_input, f, grn, self.stats)

    def add(self, h, f, level):
        return h + f if self.empty else _replace(h, h.F + f)

    def densify(self, h):
        if self.empty:
            return h.new_zeros(self.B, self.C, self.g, self.g)
        out, _, _ = h.dense(shape=torch.Size([self.B, self.C, self.g, self.g]),
                            min_coordinate=torch.zeros(2, dtype=torch.int))
        return out
