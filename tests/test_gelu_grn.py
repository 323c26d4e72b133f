"""gelu_grn = GRN(GELU(h)): every impl against the reference (GELU then GRN in fp64), both statistic modes,
every mask case; fp64 gradcheck, opcheck with mixed requires_grad; the fused impl keeps one saved tensor."""

import pytest
import torch
import torch.nn.functional as F

import mmearth_kernels as mk
from mmearth_kernels.testing import MASK_CASES, grn_samples

from _compare import check_against_reference
from conftest import device_impls

DEVICE_IMPLS = device_impls("gelu_grn")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
STATS = ["per_sample", "batch"]
OP = torch.ops.mmearth_kernels


def test_reference_is_grn_of_gelu():
    """Written out: the reference is GELU (erf) followed by the GRN reference."""
    for s in grn_samples("cpu", torch.float64, cases=MASK_CASES[:4]):
        for stats in STATS:
            want = mk.grn(F.gelu(s.x), s.gamma, s.beta, s.layout, stats=stats, impl="ref")
            torch.testing.assert_close(mk.gelu_grn(s.x, s.gamma, s.beta, s.layout, stats=stats, impl="ref"), want,
                                       rtol=0, atol=0)


@pytest.mark.parametrize("case", MASK_CASES, ids=str)
@pytest.mark.parametrize("stats", STATS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device, impl", DEVICE_IMPLS)
def test_matches_reference(device, impl, dtype, stats, case, poison):
    for s in grn_samples(device, dtype, requires_grad=True, cases=[case]):
        check_against_reference(
            s.name, lambda h, g, b, lay=s.layout: mk.gelu_grn(h, g, b, lay, stats=stats, impl=impl),
            lambda h, g, b, lay=s.layout: mk.gelu_grn(h, g, b, lay, stats=stats, impl="ref"),
            [s.x, s.gamma, s.beta], dtype, ("dh", "dgamma", "dbeta"), seed=3)


@pytest.mark.parametrize("device, impl", DEVICE_IMPLS)
def test_gradcheck_fp64(device, impl):
    for s in grn_samples(device, torch.float64, requires_grad=True):
        if s.x.numel() > 800:
            continue
        for stats in STATS:
            f = lambda h, g, b, lay=s.layout, st=stats: mk.gelu_grn(h, g, b, lay, stats=st, impl=impl)  # noqa: E731
            assert torch.autograd.gradcheck(f, (s.x, s.gamma, s.beta), fast_mode=impl == "triton"), (s.name, stats)


FUSED = [p for p in DEVICE_IMPLS if "triton" in p.id or p.id == "cpu-cpu"]
FUSED_OPS = {"triton": (OP.gelu_grn_triton, OP.gelu_grn_backward_triton), "cpu": (OP.gelu_grn, OP.gelu_grn_backward)}


@pytest.mark.parametrize("needs", ["none", "all", "h only", "gamma only"])
@pytest.mark.parametrize("device, impl", FUSED)
def test_opcheck_fused(device, impl, needs):
    """The fused ops (C++ CPU, Triton); the CUDA impl is GELU + the GRN op, opchecked in test_grn.py."""
    fwd, bwd = FUSED_OPS[impl]
    for s in grn_samples(device, torch.float32, requires_grad=needs == "all"):
        if needs == "h only":
            s.x.requires_grad_(True)
        elif needs == "gamma only":
            s.gamma.requires_grad_(True)
        for batch_stats in (False, True):
            args = (s.x, s.gamma, s.beta, s.layout.offsets, 1e-6, batch_stats)
            torch.library.opcheck(fwd.default, args)
            if needs == "none":
                _, gnorm = fwd(*args)
                for mask in ([True, True, True], [True, False, False], [False, True, True]):
                    dh, dg, db = bwd(torch.randn_like(s.x), s.x, s.gamma, gnorm, s.layout.offsets, 1e-6,
                                     batch_stats, mask)
                    assert [t.numel() > 0 for t in (dh, dg, db)] == [m and n > 0 for m, n in
                                                                    zip(mask, (s.x.numel(), s.gamma.numel(),
                                                                               s.gamma.numel()))]
                torch.library.opcheck(bwd.default,
                                      (torch.randn_like(s.x), s.x, s.gamma, gnorm, s.layout.offsets, 1e-6,
                                       batch_stats, [True, True, True]))


def _saved_elements(fn) -> int:
    n = 0

    def pack(t):
        nonlocal n
        n += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return n


@pytest.mark.parametrize("device, impl", FUSED)
def test_fused_saves_only_the_input(device, impl):
    """The point of fusing: autograd keeps h (and [groups, C] statistics), not GELU's output as well."""
    s = grn_samples(device, torch.float32, requires_grad=True, cases=[MASK_CASES[3]])[1]
    N, C = s.x.shape
    fused = _saved_elements(lambda: mk.gelu_grn(s.x, s.gamma, s.beta, s.layout, impl=impl))
    unfused = _saved_elements(lambda: mk.grn(F.gelu(s.x), s.gamma, s.beta, s.layout, impl=impl))
    assert N * C <= fused < N * C + 4 * C + 64, (fused, N * C)
    assert unfused >= 2 * N * C, unfused
