"""Both ops under torch.compile(fullgraph=True) agree with eager, forward and backward."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.testing import MASK_CASES, dwconv_samples, grn_samples

from conftest import cpu_impls

IMPLS = ["ref", *cpu_impls("sparse_dwconv2d")]


def _run(fn, tensors):
    out = fn(*tensors)
    out.pow(2).sum().backward()
    return [out.detach()] + [t.grad.clone() for t in tensors]


@pytest.mark.slow
@pytest.mark.parametrize("impl", IMPLS)
def test_compiled_matches_eager(impl):
    torch._dynamo.reset()
    d = dwconv_samples(cases=[MASK_CASES[3]])[0]
    s = grn_samples(cases=[MASK_CASES[3]])[1]
    lay = d.layout

    def block(x, w, b, gamma, beta):
        # dwconv -> GRN on the same rows, as in a ConvNeXt V2 block (widths kept equal here)
        y = mk.sparse_dwconv2d(x, w, b, lay, impl=impl)
        return mk.grn(y, gamma, beta, lay, impl=impl) + x

    C = d.x.shape[1]
    tensors = [d.x, d.weight, d.bias, s.gamma[:C].detach().clone(), s.beta[:C].detach().clone()]
    eager_in = [t.detach().clone().requires_grad_() for t in tensors]
    comp_in = [t.detach().clone().requires_grad_() for t in tensors]
    want = _run(block, eager_in)
    got = _run(torch.compile(block, fullgraph=True), comp_in)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
