"""Depthwise 7x7 conv + LayerNorm (a ConvNeXt V2 block's first two ops): the fused op against the conv then
``F.layer_norm``, on atto/tiny stage shapes.

Impls: "cpu" (C++), "triton" and "triton-patches" (the patch-tiled kernel) are the fused op. Baselines: "unfused"
= this library's conv (the impl ``auto`` picks, on rows) then ``F.layer_norm`` on the same rows: what the
``sparse`` backend runs; on GPU also "unfused-patches" (the patch-tiled conv, then ``F.layer_norm``). The
backward is the same in both (aten's LayerNorm backward, then the conv's backward), so "fwdbwd" shows what the
forward's saving is worth in a training step. Ideal bytes: forward reads x and writes y1 (kept for the backward)
and y; backward reads dy and y1, writes dy1, reads dy1 and x, writes dx.
"""

import pytest
import torch
import torch.nn.functional as F

import mmearth_kernels as mk
from mmearth_kernels.ops import _impl

from conftest import case_id, kernel_cases, stage_layout, time_mode


def _impls(device):
    fused = [i for i in mk.available_impls("sparse_dwconv2d_ln", device) if i in ("cpu", "triton")]  # "cuda": unfused
    patches = ["triton-patches"] if "triton" in fused else []
    return fused + patches + ["unfused"] + (["unfused-patches"] if patches else [])


CASES = kernel_cases(_impls, modes=("fwd", "fwdbwd"))


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_sparse_dwconv_ln(case, timed, benchmark):
    dev, dtype, impl, model, res, C, mode = case
    benchmark.group = f"sparse_dwconv2d_ln {dev} {str(dtype)[6:]} {model} {res}px C{C} {mode}"
    lay = stage_layout(res, dev)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(lay.num_rows, C, generator=gen).to(dev, dtype).requires_grad_()
    w = (torch.randn(C, 1, 7, 7, generator=gen) / 7).to(dev, dtype).requires_grad_()
    b = torch.randn(C, generator=gen).to(dev, dtype).requires_grad_()
    lw = (1 + torch.randn(C, generator=gen) / 4).to(dev, dtype).requires_grad_()
    lb = torch.randn(C, generator=gen).to(dev, dtype).requires_grad_()
    tiling = "patches" if impl.endswith("patches") else "rows"
    if impl.startswith("unfused"):
        kernel = "triton" if tiling == "patches" else _impl.resolve("sparse_dwconv2d", "auto", x.device)

        def forward():
            return F.layer_norm(mk.sparse_dwconv2d(x, w, b, lay, impl=kernel, tiling=tiling), (C,), lw, lb, 1e-6)
    else:
        kernel = impl.split("-")[0]

        def forward():
            return mk.sparse_dwconv2d_ln(x, w, b, lw, lb, lay, impl=kernel, tiling=tiling)

    g = torch.randn_like(forward())
    nc = lay.num_rows * C * x.element_size()
    time_mode(timed, mode, forward, g, dev, {"fwd": 3 * nc, "fwdbwd": 9 * nc},
              op="sparse_dwconv2d_ln", impl=impl, model=model, res=res, C=C, dtype=str(dtype)[6:])
