"""The ops under torch.compile(fullgraph=True) agree with eager, forward and backward."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.testing import MASK_CASES, dwconv_samples, grn_samples

from conftest import device_impls

PARAMS = [pytest.param("cpu", "ref", id="cpu-ref"), *device_impls("sparse_dwconv2d")]


def _run(fn, tensors):
    out = fn(*tensors)
    out.pow(2).sum().backward()
    return [out.detach()] + [t.grad.clone() for t in tensors]


@pytest.mark.slow
@pytest.mark.parametrize("device, impl", PARAMS)
def test_compiled_matches_eager(device, impl):
    torch._dynamo.reset()
    d = dwconv_samples(device, cases=[MASK_CASES[3]])[0]
    s = grn_samples(device, cases=[MASK_CASES[3]])[1]
    lay = d.layout

    def block(x, w, b, gamma, beta):
        # dwconv -> GRN (and the fused GELU + GRN) on the same rows, as in a ConvNeXt V2 block (widths equal here)
        y = mk.sparse_dwconv2d(x, w, b, lay, impl=impl)
        return mk.grn(y, gamma, beta, lay, impl=impl) + mk.gelu_grn(y, gamma, beta, lay, impl=impl) + x

    C = d.x.shape[1]
    tensors = [d.x, d.weight, d.bias, s.gamma[:C].detach().clone(), s.beta[:C].detach().clone()]
    want = _run(block, [t.detach().clone().requires_grad_() for t in tensors])
    # On CUDA also CUDA graphs (reduce-overhead): catches kernels launched on the wrong stream.
    modes = ["default"] + (["reduce-overhead"] if device == "cuda" else [])
    for mode in modes:
        torch._dynamo.reset()
        got = _run(torch.compile(block, fullgraph=True, mode=mode), [t.detach().clone().requires_grad_()
                                                                     for t in tensors])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
