"""Bad input gives a clear error naming the argument; nothing crashes, nothing is silently wrong."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels import _extension
from mmearth_kernels.ops.registry import KINDS, OPS
from mmearth_kernels.testing import MASK_CASES

from conftest import cpu_impls

GRN_IMPLS = ["ref", *cpu_impls("grn")]
MASK = mk.random_patch_mask(2, 7, 0.6, generator=torch.Generator().manual_seed(0))
L28 = mk.build_layout(MASK, 28, 19)
L14 = mk.build_layout(MASK, 14, 19)
X = torch.randn(L28.num_rows, 8)
W = torch.randn(8, 1, 7, 7)
B = torch.randn(8)
G = torch.randn(8)

DWCONV_CASES = {
    "x int dtype": (dict(x=X.long()), TypeError, "x must be float32"),
    "x rank": (dict(x=X[None]), ValueError, "x must be 2-D"),
    "x not a tensor": (dict(x=X.numpy()), TypeError, "x must be a torch.Tensor"),
    "x non-contiguous": (dict(x=torch.randn(8, L28.num_rows).t()), ValueError, "x must be contiguous"),
    "weight dtype": (dict(weight=W.double()), TypeError, "weight has dtype torch.float64 but x has"),
    "weight device": (dict(weight=W.to("meta")), ValueError, "weight is on meta but x is on cpu"),
    "weight channels": (dict(weight=torch.randn(9, 1, 7, 7)), ValueError, "C = 8"),
    "weight rank": (dict(weight=torch.randn(8, 7, 7)), ValueError, "weight must be 4-D"),
    "kernel even": (dict(weight=torch.randn(8, 1, 4, 4)), ValueError, "odd"),
    "kernel not square": (dict(weight=torch.randn(8, 1, 7, 5)), ValueError, "square"),
    "bias shape": (dict(bias=torch.randn(7)), ValueError, "bias must have shape"),
    "layout of another stage": (dict(layout=L14), ValueError, "another stage"),
    "layout not a layout": (dict(layout="L28"), TypeError, "SparseLayout"),
}


FAMILY_CASES = {  # every op of the GRN family
    "gamma size": (dict(gamma=torch.randn(7)), ValueError, "gamma must hold C = 8"),
    "beta dtype": (dict(beta=G.half()), TypeError, "beta has dtype"),
    "stats unknown": (dict(stats="global"), ValueError, "stats must be one of"),
    "eps negative": (dict(eps=-1.0), ValueError, "eps must be >= 0"),
    "layout of another stage": (dict(layout=L14), ValueError, "another stage"),
}
GRN_CASES = FAMILY_CASES | {
    "layout missing": (dict(layout=None), ValueError, "needs a layout"),
    "offsets int64": (dict(layout=L28.offsets.long()), ValueError, "int32"),
    "x rank 5": (dict(x=torch.randn(1, 2, 3, 4, 8)), ValueError, "x must be"),
    "dense with a layout": (dict(x=torch.randn(2, 5, 8)), ValueError, "takes no layout"),
}
GELU_GRN_CASES = FAMILY_CASES | {
    "layout missing": (dict(layout=None), ValueError, "takes packed"),
    "dense input": (dict(h=torch.randn(2, 5, 8)), ValueError, "h must be 2-D"),
}


# op -> (a good call's arguments, {case: (what changes, error, message)})
BAD = {
    "sparse_dwconv2d": (dict(x=X, weight=W, bias=B, layout=L28, impl="auto"), DWCONV_CASES),
    "grn": (dict(x=X, gamma=G, beta=G, layout=L28, eps=1e-6, stats="per_sample"), GRN_CASES),
    "gelu_grn": (dict(h=X, gamma=G, beta=G, layout=L28, eps=1e-6, stats="per_sample", impl="auto"), GELU_GRN_CASES),
}


@pytest.mark.parametrize("op, name", [(op, name) for op, (_, cases) in BAD.items() for name in sorted(cases)])
def test_bad_input_is_named(op, name):
    good, cases = BAD[op]
    override, exc, match = cases[name]
    with pytest.raises(exc, match=match):
        OPS[op].fn(**(good | override))


@pytest.mark.parametrize("impl", GRN_IMPLS)
@pytest.mark.parametrize("change", ["end past N", "start not 0", "decreasing"])
def test_grn_bad_offset_values(change, impl):
    """Every impl, the reference included, refuses offsets that do not bound the rows (CPU tensors)."""
    off = L28.offsets.clone()
    if change == "end past N":
        off[-1] += 1
    elif change == "start not 0":
        off[0] = 1
    else:
        off[1] = off[2] + 1
    with pytest.raises(ValueError, match="layout offsets must start at 0, end at N"):
        mk.grn(X, G, G, off, impl=impl)
    if impl == "cpu":  # direct op calls are checked in C++
        with pytest.raises(RuntimeError, match="offsets must"):
            torch.ops.mmearth_kernels.grn(X, G, G, off, 1e-6, False)


@pytest.mark.parametrize("op", sorted(OPS))
def test_impl_and_tiling_errors_name_them(op):
    """Every op of the table: an unknown impl or tiling, and a kernel for another device, are refused by name."""
    spec = OPS[op]
    s = spec.samples("cpu", torch.float32, cases=[MASK_CASES[3]])[0]

    def call(**kw):
        return spec.fn(*s.inputs, s.layout, **s.kwargs, **kw)

    with pytest.raises(ValueError, match="impl must be one of"):
        call(impl="fast")
    if len(spec.tilings) > 1:
        with pytest.raises(ValueError, match="tiling must be one of"):
            call(tiling="tiles")
    for kind in spec.kinds:
        key = KINDS[kind].dispatch_key
        if key not in (None, "CPU") and _extension.LOADED:
            with pytest.raises(ValueError, match=f"impl='{kind}' runs on {kind} tensors, but the input is on cpu"):
                call(impl=kind)


def test_direct_op_calls_are_checked_in_cpp():
    """Calls that bypass the Python wrapper still get named errors from the C++ checks."""
    op = torch.ops.mmearth_kernels
    with pytest.raises(RuntimeError, match="kernel size must be odd"):
        op.sparse_dwconv2d(X, torch.randn(8, 1, 4, 4), None, L28.row_pos, L28.inv_map)
    with pytest.raises(RuntimeError, match="another stage"):
        op.sparse_dwconv2d(X, W, None, L14.row_pos, L14.inv_map)
    with pytest.raises(RuntimeError, match="row_pos must be int32"):
        op.sparse_dwconv2d(X, W, None, L28.row_pos.long(), L28.inv_map)
    with pytest.raises(RuntimeError, match="gamma must be a contiguous"):
        op.grn(X, torch.randn(7), G, L28.offsets, 1e-6, False)
