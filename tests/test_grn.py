"""GRN: every impl against the reference in both statistic modes, packed and dense layouts."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.testing import MASK_CASES, grn_samples, make_layout

from _compare import check_against_reference
from conftest import cpu_impls, device_impls, requires_ext

IMPLS = cpu_impls("grn")
DEVICE_IMPLS = device_impls("grn")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
STATS = ["per_sample", "batch"]
OP = torch.ops.mmearth_kernels


def test_cpu_kernel_is_available():
    assert "cpu" in IMPLS, "the C++ CPU kernel is not available: mmearth_kernels._C failed to build or load"


@pytest.mark.parametrize("case", MASK_CASES, ids=str)
@pytest.mark.parametrize("stats", STATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device, impl", DEVICE_IMPLS)
def test_matches_reference(device, impl, dtype, stats, case, poison):
    for s in grn_samples(device, dtype, requires_grad=True, cases=[case]):  # the C configs
        check_against_reference(
            s.name, lambda x, g, b, lay=s.layout: mk.grn(x, g, b, lay, stats=stats, impl=impl),
            lambda x, g, b, lay=s.layout: mk.grn(x, g, b, lay, stats=stats, impl="ref"),
            [s.x, s.gamma, s.beta], dtype, ("dx", "dgamma", "dbeta"), seed=3)


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
    torch.testing.assert_close(yd, mk.reference.grn_dense_eager(dense, gamma, beta))


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


@requires_ext
@pytest.mark.parametrize("device, impl", DEVICE_IMPLS)
def test_gradcheck_fp64(device, impl):
    for s in grn_samples(device, torch.float64, requires_grad=True):
        if s.x.numel() > 800:
            continue
        for stats in STATS:
            f = lambda x, g, b, lay=s.layout, st=stats: mk.grn(x, g, b, lay, stats=st, impl=impl)  # noqa: E731
            assert torch.autograd.gradcheck(f, (s.x, s.gamma, s.beta), fast_mode=impl == "triton"), (s.name, stats)


@requires_ext
@pytest.mark.parametrize("needs", ["none", "all", "x only", "gamma only"])
@pytest.mark.parametrize("device, impl", DEVICE_IMPLS)
def test_opcheck(device, impl, needs):
    """Mixed requires_grad (a frozen GRN, data that needs no gradient), as extension-cpp's tests do."""
    for s in grn_samples(device, torch.float32, requires_grad=needs == "all"):
        if needs == "x only":
            s.x.requires_grad_(True)
        elif needs == "gamma only":
            s.gamma.requires_grad_(True)
        for batch_stats in (False, True):
            args = (s.x, s.gamma, s.beta, s.layout.offsets, 1e-6, batch_stats)
            torch.library.opcheck(OP.grn.default, args)
            if needs in ("x only", "gamma only"):
                leaf = s.x if needs == "x only" else s.gamma
                stats = "batch" if batch_stats else "per_sample"
                y = mk.grn(s.x, s.gamma, s.beta, s.layout, stats=stats, impl=impl)
                g = torch.randn_like(y)
                (got,) = torch.autograd.grad(y, leaf, g)
                x64, g64 = s.x.detach().double(), s.gamma.detach().double()
                leaf64 = (x64 if needs == "x only" else g64).requires_grad_(True)
                ref = mk.grn(x64, g64, s.beta.detach().double(), s.layout, stats=stats, impl="ref")
                (want,) = torch.autograd.grad(ref, leaf64, g.double())
                torch.testing.assert_close(got.double(), want, atol=2e-4, rtol=2e-4, msg=lambda m: f"{s.name}: {m}")
            if needs == "none":
                _, gnorm = OP.grn(*args)
                torch.library.opcheck(OP.grn_backward.default,
                                      (torch.randn_like(s.x), s.x, s.gamma, gnorm, s.layout.offsets, 1e-6,
                                       batch_stats, [True, True, True]))
