"""The ``minkowski`` encoder backend: the upstream engine, on this encoder's own parameters.

MinkowskiEngine (ME) is optional and imported only here. ME layers are called through
``torch.func.functional_call`` with our weights mapped to ME's layouts (:mod:`.interop`), so
gradients land on the shared parameters and the backend can be switched at runtime like the others.
The depthwise 7x7 uses the ConvNeXt-V2 fork's ``MinkowskiDepthwiseConvolution`` when it exists and the
tensors are on CUDA, and stock ``MinkowskiChannelwiseConvolution`` otherwise (same kernel layout; a
Python loop over offsets, so a correctness reference, not a fast path). Build ME for the torch in use
with ``scripts/build_minkowski.sh``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .. import layout as L
from .interop import conv_to_me, depthwise_to_me

INSTALL_HINT = ("install it with `bash scripts/build_minkowski.sh` (builds MinkowskiEngine 0.5.4 for the torch in "
                "this environment; PyPI's sdist does not build as is on current Python/torch)")


@functools.lru_cache(maxsize=1)
def engine():
    """The MinkowskiEngine module, or a clear error saying why it cannot be used."""
    try:
        import MinkowskiEngine as ME
    except Exception as e:  # a broken install raises ImportError or worse: keep the original message
        raise RuntimeError(f"backend='minkowski' needs MinkowskiEngine, which failed to import "
                           f"({type(e).__name__}: {e}); {INSTALL_HINT}") from e
    return ME


def available() -> bool:
    try:
        engine()
        return True
    except RuntimeError:
        return False


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


def _rows(x, fn):
    return _replace(x, fn(x.F))


def _grn(x, grn, stats: str, eps: float = 1e-6):
    """GRN on ME rows: batch-global (the released MinkowskiGRN) or per sample (rows grouped by the
    batch index of their coordinate; ME does not keep rows sorted by sample)."""
    f = x.F
    gamma, beta = grn.gamma.reshape(-1), grn.beta.reshape(-1)
    if stats == "batch":
        gid = torch.zeros(f.shape[0], dtype=torch.long, device=f.device)
        groups = 1
    else:
        gid = x.C[:, 0].long().to(f.device)
        groups = int(gid.max()) + 1 if gid.numel() else 1
    sq = f.new_zeros(groups, f.shape[1]).index_add(0, gid, f * f)
    nz = sq != 0  # NaN propagates, as in grn_ref
    g = torch.where(nz, sq, torch.ones_like(sq)).sqrt() * nz
    nx = g / (g.mean(dim=-1, keepdim=True) + eps)
    return _replace(x, gamma * (f * nx[gid]) + beta + f)


def forward(encoder, x: torch.Tensor, mask: torch.Tensor, kept) -> torch.Tensor:
    ME = engine()
    B = x.shape[0]
    g = encoder.grid
    lay_in = L.build_layout(mask, encoder.img_size, kept)
    if lay_in.num_rows == 0:  # nothing visible (batch 0 or everything masked): the engine crashes on 0 points,
        return x.new_zeros(B, encoder.dims[-1], g, g)  # and the output is all zeros on every backend anyway
    pos = lay_in.row_pos.long()
    hw = lay_in.height * lay_in.width
    coords = torch.stack([pos // hw, (pos % hw) // lay_in.width, pos % lay_in.width], dim=1).int()
    h = ME.SparseTensor(L.from_dense(x, lay_in), coordinates=coords.cpu() if not x.is_cuda else coords,
                        device=x.device)
    st = encoder.stem
    if st.kind == "mmearth":
        h = _conv(h, st.conv.weight, st.conv.bias, 1)
        h = _rows(h, lambda f: F.gelu(st.norm1(f)))
        h = _depthwise(h, st.dwconv.weight, st.dwconv.bias, encoder.reduction)
        h = _rows(h, st.norm2)
    else:
        h = _rows(_conv(h, st.conv.weight, st.conv.bias, encoder.reduction), st.norm)
    for i in range(4):
        if i > 0:
            ds = encoder.downsample[i]
            h = _conv(_rows(h, ds.norm), ds.conv.weight, ds.conv.bias, 2)
        for blk in encoder.stages[i]:
            y = _depthwise(h, blk.dwconv.weight, blk.dwconv.bias, 1)
            y = _rows(y, lambda f, b=blk: F.gelu(b.pwconv1(b.norm(f))))
            y = _grn(y, blk.grn, encoder.grn_stats)
            y = _rows(y, blk.pwconv2)
            h = _replace(h, h.F + y.F)
    C = encoder.dims[-1]
    out, _, _ = h.dense(shape=torch.Size([B, C, g, g]), min_coordinate=torch.zeros(2, dtype=torch.int))
    return out
