"""GRN: each impl x fwd/bwd/fwd+bwd on the 4C-wide MLP activations of ConvNeXt V2 atto/tiny stages.

Baselines: "eager" = ConvNeXt V2's dense GRN (``torch.norm`` over H, W) on the same active rows
viewed as ``[B, R, 1, 4C]``; "eager_dense" = the same on the full dense map with masked sites
zero (what a dense-masked encoder pays); "compiled" = eager under ``torch.compile`` (GPU only:
it needs a C++/Triton toolchain per shape and is slow to build on 2 cores).
"""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.reference import grn_dense_eager

from conftest import case_id, kernel_cases, stage_layout, time_mode


def _impls(device):
    extra = ["compiled"] if device == "cuda" else []
    return [i for i in mk.available_impls("grn", device) if i != "ref"] + ["ref", "eager", "eager_dense"] + extra


CASES = kernel_cases(_impls, width=4)


_compiled = torch.compile(grn_dense_eager)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_grn(case, timed, benchmark):
    dev, dtype, impl, model, res, C, mode = case
    benchmark.group = f"grn {dev} {str(dtype)[6:]} {model} {res}px C{C} {mode}"
    lay = stage_layout(res, dev)
    B = lay.batch_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(lay.num_rows, C, generator=gen).to(dev, dtype).requires_grad_()
    gamma = torch.randn(C, generator=gen).to(dev, dtype).requires_grad_()
    beta = torch.randn(C, generator=gen).to(dev, dtype).requires_grad_()
    if impl in ("eager", "compiled"):
        xe = x.detach().view(B, -1, 1, C).requires_grad_()
        fn = grn_dense_eager if impl == "eager" else _compiled

        def forward():
            return fn(xe, gamma, beta)
    elif impl == "eager_dense":
        xe = mk.to_dense(x.detach(), lay).permute(0, 2, 3, 1).contiguous().requires_grad_()

        def forward():
            return grn_dense_eager(xe, gamma, beta)
    else:
        def forward():
            return mk.grn(x, gamma, beta, lay, impl=impl)

    g = torch.randn_like(forward())
    nc = lay.num_rows * C * x.element_size()
    time_mode(timed, mode, forward, g, dev, {"fwd": 3 * nc, "bwd": 5 * nc, "fwdbwd": 8 * nc},
              op="grn", impl=impl, model=model, res=res, C=C, dtype=str(dtype)[6:])
