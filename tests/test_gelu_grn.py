"""GELU + GRN's own semantics (tests/test_op_conformance.py checks every impl against the reference): the reference
is GRN of GELU, and the fused impls keep one saved tensor, not GELU's output as well."""

import pytest
import torch
import torch.nn.functional as F

import mmearth_kernels as mk
from mmearth_kernels.ops.gelu_grn import GELU_GRN
from mmearth_kernels.testing import MASK_CASES, grn_samples

from conftest import device_impls

STATS = ["per_sample", "batch"]
FUSED = [p for p in device_impls("gelu_grn") if GELU_GRN.impl(p.values[1]).fused]


def test_reference_is_grn_of_gelu():
    """Written out: the reference is GELU (erf) followed by the GRN reference."""
    for s in grn_samples("cpu", torch.float64, cases=MASK_CASES[:4]):
        for stats in STATS:
            want = mk.grn(F.gelu(s.x), s.gamma, s.beta, s.layout, stats=stats, impl="ref")
            torch.testing.assert_close(mk.gelu_grn(s.x, s.gamma, s.beta, s.layout, stats=stats, impl="ref"), want,
                                       rtol=0, atol=0)


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
