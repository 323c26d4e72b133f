"""Sparse depthwise 7x7 conv: each impl x fwd/bwd/fwd+bwd on ConvNeXt V2 atto and tiny stage shapes.

Baseline ("dense"): what users have today, channels_last ``conv2d(groups=C)`` with the mask
applied before and after, on the same data (batch 64, 61.2 % masked). "triton-patches" is the
patch-tiled Triton kernel (``tiling="patches"``). Ideal bytes: forward reads x and writes y; the
backward reads dy and x and writes dx (the weight gradient's partials are left out).
"""

import pytest
import torch
import torch.nn.functional as F

import mmearth_kernels as mk

from conftest import case_id, kernel_cases, stage_layout, time_mode


def _impls(device):
    compiled = [i for i in mk.available_impls("sparse_dwconv2d", device) if i != "ref"]
    return compiled + (["triton-patches"] if "triton" in compiled else []) + ["ref", "dense"]


CASES = kernel_cases(_impls)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sparse_dwconv(case, timed, benchmark):
    dev, dtype, impl, model, res, C, mode = case
    benchmark.group = f"sparse_dwconv2d {dev} {str(dtype)[6:]} {model} {res}px C{C} {mode}"
    lay = stage_layout(res, dev)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(lay.num_rows, C, generator=gen).to(dev, dtype).requires_grad_()
    w = (torch.randn(C, 1, 7, 7, generator=gen) / 7).to(dev, dtype).requires_grad_()
    b = torch.randn(C, generator=gen).to(dev, dtype).requires_grad_()
    if impl == "dense":
        xin = mk.to_dense(x.detach(), lay).contiguous(memory_format=torch.channels_last).requires_grad_()
        m = lay.active()[:, None].to(dtype).contiguous(memory_format=torch.channels_last)

        def forward():
            return F.conv2d(xin * m, w, b, padding=3, groups=C) * m
    else:
        kernel, _, tiling = impl.partition("-")

        def forward():
            return mk.sparse_dwconv2d(x, w, b, lay, impl=kernel, tiling=tiling or "rows")

    g = torch.randn_like(forward())
    nc = lay.num_rows * C * x.element_size()
    time_mode(timed, mode, forward, g, dev, {"fwd": 2 * nc, "bwd": 3 * nc, "fwdbwd": 5 * nc},
              op="sparse_dwconv2d", impl=impl, model=model, res=res, C=C, dtype=str(dtype)[6:])
