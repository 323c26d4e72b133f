"""GRN(GELU(h)): the fused op against GELU then GRN, on the 4C-wide MLP activations of atto/tiny stages.

Impls: "cpu" (C++) and "triton" are the fused kernels. Baselines: "unfused" = ``F.gelu`` then this library's
fastest GRN on the same rows (what the ``sparse``
backend runs); "eager" = ``F.gelu`` then ConvNeXt V2's dense GRN on ``[B, R, 1, 4C]``; "compiled" = that
under ``torch.compile`` (GPU only). Ideal bytes are those of the two-pass fused kernel: forward reads h
twice and writes y, backward reads (dy, h) twice and writes dh (docs/bytes-model.md).
"""

import pytest
import torch
import torch.nn.functional as F

import mmearth_kernels as mk
from mmearth_kernels.reference import grn_dense_eager

from conftest import case_id, kernel_cases, stage_layout, time_mode


def _impls(device):
    fused = [i for i in mk.available_impls("gelu_grn", device) if i in ("cpu", "triton")]  # "cuda" is unfused
    return fused + ["unfused", "eager"] + (["compiled"] if device == "cuda" else [])


CASES = kernel_cases(_impls, width=4)


def _gelu_grn_eager(h, gamma, beta):
    return grn_dense_eager(F.gelu(h), gamma, beta)


_compiled = torch.compile(_gelu_grn_eager)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_gelu_grn(case, timed, benchmark):
    dev, dtype, impl, model, res, C, mode = case
    benchmark.group = f"gelu_grn {dev} {str(dtype)[6:]} {model} {res}px C{C} {mode}"
    lay = stage_layout(res, dev)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(lay.num_rows, C, generator=gen).to(dev, dtype).requires_grad_()
    gamma = torch.randn(C, generator=gen).to(dev, dtype).requires_grad_()
    beta = torch.randn(C, generator=gen).to(dev, dtype).requires_grad_()
    if impl in ("eager", "compiled"):
        he = h.detach().view(lay.batch_size, -1, 1, C).requires_grad_()
        fn = _gelu_grn_eager if impl == "eager" else _compiled

        def forward():
            return fn(he, gamma, beta)
    elif impl == "unfused":
        def forward():
            return mk.grn(F.gelu(h), gamma, beta, lay)
    else:
        def forward():
            return mk.gelu_grn(h, gamma, beta, lay, impl=impl)

    g = torch.randn_like(forward())
    nc = lay.num_rows * C * h.element_size()
    time_mode(timed, mode, forward, g, dev, {"fwd": 3 * nc, "bwd": 5 * nc, "fwdbwd": 8 * nc},
              op="gelu_grn", impl=impl, model=model, res=res, C=C, dtype=str(dtype)[6:])
