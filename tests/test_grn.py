"""GRN's own semantics (the generated suite, tests/test_op_conformance.py, checks every impl against the reference):
the reference against the equations written out by hand, the dense layout, finite results where G = 0."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.testing import MASK_CASES, make_layout

from conftest import cpu_impls

IMPLS = cpu_impls("grn")
STATS = ["per_sample", "batch"]
def test_reference_formula_per_sample_and_batch():
    """The reference against the equations written out by hand, sample by sample."""
    lay = make_layout(MASK_CASES[4])  # includes a sample with no active rows
    x = torch.randn(lay.num_rows, 6, dtype=torch.float64)
    gamma, beta = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    y = mk.grn(x, gamma, beta, lay, impl="ref")
    off = lay.offsets.tolist()
    for b in range(lay.batch_size):
        xs = x[off[b]:off[b + 1]]
        G = xs.pow(2).sum(0).sqrt()
        nx = G / (G.mean() + 1e-6)
        torch.testing.assert_close(y[off[b]:off[b + 1]], gamma * xs * nx + beta + xs)
    # batch-global (the released MinkowskiGRN): one G over all rows of the batch
    G = x.pow(2).sum(0).sqrt()
    torch.testing.assert_close(mk.grn(x, gamma, beta, lay, stats="batch", impl="ref"),
                               gamma * x * (G / (G.mean() + 1e-6)) + beta + x)


@pytest.mark.parametrize("impl", ["ref", *IMPLS])
def test_dense_layout_equals_packed(impl):
    """[B, H, W, C] with masked sites zero gives the packed result at active sites (per sample)."""
    lay = make_layout(MASK_CASES[3])
    x = torch.randn(lay.num_rows, 9)
    gamma, beta = torch.randn(9), torch.randn(9)
    dense = mk.to_dense(x, lay).permute(0, 2, 3, 1).contiguous()  # [B, H, W, C], zeros at masked sites
    yd = mk.grn(dense, gamma.view(1, 1, 1, 9), beta.view(1, 1, 1, 9), impl=impl)
    assert yd.shape == dense.shape
    yp = mk.grn(x, gamma, beta, lay, impl=impl)
    got = mk.from_dense(yd.permute(0, 3, 1, 2), lay)
    torch.testing.assert_close(got, yp)
    # and it is ConvNeXt V2's eager GRN
    torch.testing.assert_close(yd, mk.reference.grn_dense(dense, gamma, beta))


@pytest.mark.parametrize("impl", ["ref", *IMPLS])
def test_all_masked_sample_is_finite(impl):
    lay = make_layout(MASK_CASES[4])
    assert lay.offsets[1] == 0  # sample 0 has no rows
    x = torch.randn(lay.num_rows, 5, requires_grad=True)
    x.data[:, 2] = 0  # a channel that is zero everywhere (G = 0): the gradient must stay finite too
    gamma = torch.randn(5, requires_grad=True)
    beta = torch.randn(5, requires_grad=True)
    for stats in STATS:
        y = mk.grn(x, gamma, beta, lay, stats=stats, impl=impl)
        y.pow(2).sum().backward()
        for t in (y, x.grad, gamma.grad, beta.grad):
            assert torch.isfinite(t).all()
        x.grad = gamma.grad = beta.grad = None
