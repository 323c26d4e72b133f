"""sparse_dwconv2d's own semantics (tests/test_op_conformance.py checks every impl against the reference): every impl
against the definition row by row and the masked dense conv, determinism across thread counts, stage shapes."""

import pytest
import torch
import torch.nn.functional as F

import mmearth_kernels as mk
from mmearth_kernels.testing import MASK_CASES, dwconv_samples, make_layout

from conftest import cpu_impls, requires_ext

IMPLS = cpu_impls("sparse_dwconv2d")
OP = torch.ops.mmearth_kernels


def _brute_force(x, w, b, lay):
    """The definition, one row at a time: bias + sum over the K*K taps of w * x at the active neighbour."""
    K, r = w.shape[-1], w.shape[-1] // 2
    y = torch.empty_like(x)
    for p, pos in enumerate(lay.row_pos.tolist()):
        s, rem = divmod(pos, lay.height * lay.width)
        h, v = divmod(rem, lay.width)
        acc = b.clone()
        for i in range(K):
            for j in range(K):
                hh, vv = h + i - r, v + j - r
                if 0 <= hh < lay.height and 0 <= vv < lay.width and (q := int(lay.inv_map[s, hh, vv])) >= 0:
                    acc = acc + w[:, 0, i, j] * x[q]
        y[p] = acc
    return y


@pytest.mark.parametrize("case", MASK_CASES[:3], ids=lambda c: c.name)
def test_every_impl_equals_the_definition_row_by_row(case):
    """Independent of the reference's dense formulation: a loop over each row's active neighbours."""
    lay = make_layout(case)
    x = torch.randn(lay.num_rows, 5, dtype=torch.float64)
    w = torch.randn(5, 1, 3, 3, dtype=torch.float64)
    b = torch.randn(5, dtype=torch.float64)
    want = _brute_force(x, w, b, lay)
    for impl in ["ref", *IMPLS]:
        torch.testing.assert_close(mk.sparse_dwconv2d(x, w, b, lay, impl=impl), want, msg=lambda m: f"{impl}: {m}")


def test_reference_is_masked_dense_conv():
    """At active sites the op equals mask * conv2d(mask * x) on dense tensors (FCMAE semantics)."""
    for case in MASK_CASES:
        lay = make_layout(case)
        B, H, W = lay.batch_size, lay.height, lay.width
        x = torch.randn(B, 11, H, W, dtype=torch.float64)
        w = torch.randn(11, 1, 5, 5, dtype=torch.float64)
        b = torch.randn(11, dtype=torch.float64)
        a = lay.active()[:, None].double()
        dense = a * F.conv2d(a * x, w, b, padding=2, groups=11)
        for impl in ["ref", *IMPLS]:
            got = mk.sparse_dwconv2d(mk.from_dense(x, lay), w, b, lay, impl=impl)
            torch.testing.assert_close(got, mk.from_dense(dense, lay))


@requires_ext
def test_backward_is_deterministic_across_thread_counts():
    s = dwconv_samples("cpu", torch.float32, cases=[MASK_CASES[3]])[0]
    g = torch.randn_like(s.x)
    args = (g, s.x, s.weight, s.layout.row_pos, s.layout.inv_map, [True, True, True])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = OP.sparse_dwconv2d_backward(*args)
        torch.set_num_threads(max(2, before))
        many = OP.sparse_dwconv2d_backward(*args)
        again = OP.sparse_dwconv2d_backward(*args)
    finally:
        torch.set_num_threads(before)
    for a, b, c in zip(one, many, again):
        assert torch.equal(a, b) and torch.equal(b, c)


@requires_ext
def test_stage_shapes_fp32():
    """One realistic shape per stage (atto widths, 61.2 % masked) against the reference."""
    mask = mk.random_patch_mask(2, 7, 0.6, generator=torch.Generator().manual_seed(1))
    for res, C in mk.testing.atto_stage_shapes():
        lay = mk.build_layout(mask, res, 19)
        x = torch.randn(lay.num_rows, C)
        w = torch.randn(C, 1, 7, 7) / 7
        b = torch.randn(C)
        torch.testing.assert_close(mk.sparse_dwconv2d(x, w, b, lay, impl="cpu"),
                                   mk.sparse_dwconv2d(x, w, b, lay, impl="ref"), atol=2e-5, rtol=2e-5)
