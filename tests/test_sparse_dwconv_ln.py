"""sparse_dwconv2d_ln's own semantics (tests/test_op_conformance.py checks every impl and tiling against the reference
on every mask case and dtype, gradcheck, opcheck, compile and autocast): the reference is LayerNorm of the conv,
several channel blocks per row with the saved statistics against aten's, every Triton block configuration, only
the gradients asked for, no zero gradients made, empty rows and channels, bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import mmearth_kernels as mk
from mmearth_kernels.ops.sparse_dwconv_ln import SPARSE_DWCONV2D_LN
from mmearth_kernels.testing import MASK_CASES, dwconv_samples

from conftest import impl_device, impl_marks

OP = torch.ops.mmearth_kernels


def _params(fused_only):
    """(device, impl, tiling) of every non-reference impl of the op table's entry (the fused ones: their own op)."""
    spec = SPARSE_DWCONV2D_LN
    return [pytest.param(impl_device(i.kind), i.kind, i.tiling, id=f"{impl_device(i.kind)}-{i.kind}-{i.tiling}",
                         marks=impl_marks(spec, i.kind, impl_device(i.kind)))
            for i in spec.impls if i.kind != "ref" and (i.fused or not fused_only)]


CASES = _params(fused_only=False)
FUSED = _params(fused_only=True)


def _ln_params(C, device, dtype, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    lw = (1 + 0.5 * torch.randn(C, generator=g)).to(device, dtype)
    lb = torch.randn(C, generator=g).to(device, dtype)
    return lw.requires_grad_(requires_grad), lb.requires_grad_(requires_grad)


def test_reference_is_layer_norm_of_the_conv():
    for s in dwconv_samples("cpu", torch.float64, cases=MASK_CASES[:4]):
        lw, lb = _ln_params(s.x.shape[1], "cpu", torch.float64, 1)
        want = F.layer_norm(mk.sparse_dwconv2d(*s.args(), impl="ref"), (s.x.shape[1],), lw, lb, 1e-6)
        torch.testing.assert_close(mk.sparse_dwconv2d_ln(*s.args()[:3], lw, lb, s.layout, impl="ref"), want,
                                   rtol=0, atol=0)


def _stage_one(device, dtype, C=150):
    """Stage-1 blocks (8 px) and C = 150: three channel blocks per row, the last one partial, so the fused kernels
    merge per-block statistics; rows offset by 4 so that E[x^2] - E[x]^2 would cancel."""
    mask = mk.random_patch_mask(2, 3, 0.5, generator=torch.Generator().manual_seed(5))
    lay = mk.build_layout(mask, 24)
    g = torch.Generator().manual_seed(9)
    x = (4 + torch.randn(lay.num_rows, C, generator=g)).to(device, dtype)
    w = torch.randn(C, 1, 7, 7, generator=g).div(7).to(device, dtype)
    b = torch.randn(C, generator=g).to(device, dtype)
    return x, w, b, *_ln_params(C, device, dtype, 3), lay


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("device, impl, tiling", FUSED)
def test_channel_blocks_and_saved_statistics(device, impl, tiling, dtype):
    x, w, b, lw, lb, lay = _stage_one(device, dtype)
    fused = SPARSE_DWCONV2D_LN.impl(impl, tiling)
    y, y1, mean, rstd = getattr(OP, fused.forward)(x, w, b, lw, lb, *fused.layout_args(lay), 1e-6)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y1, mk.sparse_dwconv2d(x, w, b, lay, impl="ref"), **tol)
    want, want_mean, want_rstd = torch.ops.aten.native_layer_norm(y1, [x.shape[1]], lw, lb, 1e-6)
    assert mean.dtype == rstd.dtype == dtype and mean.shape == (x.shape[0],)
    torch.testing.assert_close(y, want, **tol)
    torch.testing.assert_close(mean, want_mean.squeeze(1), **tol)
    torch.testing.assert_close(rstd, want_rstd.squeeze(1), **tol)


TRITON_FUSED = [p for p in FUSED if "triton" in p.id]


@pytest.mark.parametrize("device, impl, tiling", TRITON_FUSED)
def test_every_triton_config(device, impl, tiling):
    """Each block configuration the GPU autotuner may pick (the interpreter's autotune keeps only the first): C = 150
    spans 2 to 5 channel blocks, the last one partial."""
    from mmearth_kernels.triton_kernels import sparse_dwconv, sparse_dwconv_tiled

    x, w, b, lw, lb, lay = _stage_one(device, torch.float64)
    want = mk.sparse_dwconv2d_ln(x, w, b, lw, lb, lay, impl="ref")
    if tiling == "rows":
        module, layout = sparse_dwconv, (lay.row_pos, lay.inv_map)
    else:
        t = lay.patch_table
        module, layout = sparse_dwconv_tiled, (t.row0, t.stride, t.patches, t.pad, lay.block)
    assert len(module.LN_CONFIGS) >= 2
    for config in module.LN_CONFIGS:
        y, *_ = module.forward_ln(x, w, b, lw, lb, *layout, 1e-6, config=config)
        torch.testing.assert_close(y, want, rtol=1e-10, atol=1e-10, msg=lambda m, c=config: f"{c}: {m}")


@pytest.mark.parametrize("device, impl, tiling", FUSED)
def test_only_the_gradients_asked_for(device, impl, tiling):
    """A frozen conv or a frozen LayerNorm: the other's gradients are still right, the frozen ones are None."""
    x, w, b, lw, lb, lay = _stage_one(device, torch.float64, C=21)
    g = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(device)
    leaves = [t.requires_grad_() for t in (x, w, b, lw, lb)]
    full = torch.autograd.grad(mk.sparse_dwconv2d_ln(*leaves, lay, impl=impl, tiling=tiling), leaves, g)
    for frozen in ((1, 2), (3, 4), (0, 1, 2), (0,)):  # (0,): the conv's weight-only backward
        args = [t.detach().requires_grad_(i not in frozen) for i, t in enumerate(leaves)]
        y = mk.sparse_dwconv2d_ln(*args, lay, impl=impl, tiling=tiling)
        live = [t for t in args if t.requires_grad]
        got = iter(torch.autograd.grad(y, live, g))
        for i, t in enumerate(args):
            if t.requires_grad:
                torch.testing.assert_close(next(got), full[i], rtol=1e-12, atol=1e-12)


class _OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device, impl, tiling", FUSED)
def test_backward_makes_no_zero_gradients(device, impl, tiling):
    """y1, mean and rstd are outputs nobody differentiates: autograd must not materialise zero gradients for them
    (an [N, C] memset and three launches per call, as much as the fusion saves)."""
    x, w, b, lw, lb, lay = _stage_one(device, torch.float32, C=21)
    y = mk.sparse_dwconv2d_ln(*(t.requires_grad_() for t in (x, w, b, lw, lb)), lay, impl=impl, tiling=tiling)
    with _OpNames() as seen:
        y.backward(torch.ones_like(y))
    assert "native_layer_norm_backward" in seen.names, seen.names  # the mode does see the backward
    assert not {"zeros", "zeros_like", "zero_", "fill_", "new_zeros"} & set(seen.names), seen.names


@pytest.mark.parametrize("device, impl, tiling", CASES)
def test_empty_rows_and_channels(device, impl, tiling):
    """An all-masked batch (no rows) and C = 0: empty outputs, zero gradients of the right shapes."""
    empty = mk.build_layout(torch.ones(2, 3, 3, dtype=torch.bool, device=device), 6, 0)
    some = mk.build_layout(mk.random_patch_mask(2, 3, 0.5, generator=torch.Generator().manual_seed(0)).to(device), 6)
    assert empty.num_rows == 0 and some.num_rows > 0
    for lay, C in ((empty, 5), (some, 0)):
        N = lay.num_rows
        x = torch.randn(N, C, device=device, requires_grad=True)
        w = torch.randn(C, 1, 3, 3, device=device, requires_grad=True)
        b = torch.randn(C, device=device, requires_grad=True)
        lw, lb = (torch.randn(C, device=device, requires_grad=True) for _ in range(2))
        y = mk.sparse_dwconv2d_ln(x, w, b, lw, lb, lay, impl=impl, tiling=tiling)
        assert y.shape == (N, C)
        y.sum().backward()
        for t in (x, w, b, lw, lb):
            assert t.grad is not None and t.grad.shape == t.shape and not t.grad.any()


def test_bad_arguments_are_named():
    s = dwconv_samples("cpu", torch.float32, cases=[MASK_CASES[3]])[0]
    x, w, b, lay = s.args()
    C = x.shape[1]
    lw, lb = _ln_params(C, "cpu", torch.float32, 0)
    with pytest.raises(ValueError, match=r"ln_weight must have shape \(%d,\)" % C):
        mk.sparse_dwconv2d_ln(x, w, b, lw[:-1], lb, lay)
    with pytest.raises(TypeError, match="ln_bias has dtype torch.float64"):
        mk.sparse_dwconv2d_ln(x, w, b, lw, lb.double(), lay)
    with pytest.raises(ValueError, match="ln_weight is None"):
        mk.sparse_dwconv2d_ln(x, w, b, None, lb, lay)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        mk.sparse_dwconv2d_ln(x, w, b, lw, lb, lay, eps=-1.0)
    with pytest.raises(ValueError, match="not impl='cpu'"):
        mk.sparse_dwconv2d_ln(x, w, b, lw, lb, lay, impl="cpu", tiling="patches")
    with pytest.raises(ValueError, match="weight must have shape"):
        mk.sparse_dwconv2d_ln(x, w[:-1], b, lw, lb, lay)
    with pytest.raises(RuntimeError, match="ln_weight must have shape"):  # the C++ check, for direct op calls
        OP.sparse_dwconv2d_ln(x, w, b, lw[:-1], lb, lay.row_pos, lay.inv_map, 1e-6)
