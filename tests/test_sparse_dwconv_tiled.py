"""sparse_dwconv2d(tiling="patches"): the patch-tiled Triton kernels against the reference on every mask case
(blocks of 1..4 px, odd channel counts, K = 1, 3, 5, 7), gradients, opcheck, determinism; the layout's block."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.testing import MASK_CASES, dwconv_samples, make_layout

from _compare import check_against_reference
from conftest import device_impls

TILED = [p for p in device_impls("sparse_dwconv2d") if "triton" in p.id]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
OP = torch.ops.mmearth_kernels


@pytest.mark.parametrize("case", MASK_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device, impl", TILED)
def test_matches_reference(device, impl, dtype, case, poison):
    for s in dwconv_samples(device, dtype, requires_grad=True, cases=[case]):
        assert s.layout.block is not None
        check_against_reference(
            s.name, lambda x, w, b, lay=s.layout: mk.sparse_dwconv2d(x, w, b, lay, impl=impl, tiling="patches"),
            lambda x, w, b, lay=s.layout: mk.sparse_dwconv2d(x, w, b, lay, impl="ref"),
            [s.x, s.weight, s.bias], dtype, ("dx", "dw", "db"))


@pytest.mark.parametrize("device, impl", TILED)
def test_stage_blocks_8_and_odd_channels(device, impl):
    """Stage-1 blocks (8 px, one patch per program) and a 15x15 kernel (halo of two patches at b = 4)."""
    mask = mk.random_patch_mask(2, 3, 0.5, generator=torch.Generator().manual_seed(5))
    for res, C, K in ((24, 11, 7), (12, 5, 15)):
        lay = mk.build_layout(mask, res)
        x = torch.randn(lay.num_rows, C, dtype=torch.float64, device=device)
        w = torch.randn(C, 1, K, K, dtype=torch.float64, device=device)
        b = torch.randn(C, dtype=torch.float64, device=device)
        torch.testing.assert_close(mk.sparse_dwconv2d(x, w, b, lay, impl=impl, tiling="patches"),
                                   mk.sparse_dwconv2d(x, w, b, lay, impl="ref"))


@pytest.mark.parametrize("device, impl", TILED)
def test_gradcheck_fp64(device, impl):
    for s in dwconv_samples(device, torch.float64, requires_grad=True, cases=MASK_CASES[1:4]):
        if s.x.numel() > 600:
            continue
        f = lambda x, w, b, lay=s.layout: mk.sparse_dwconv2d(x, w, b, lay, impl=impl, tiling="patches")  # noqa: E731
        assert torch.autograd.gradcheck(f, (s.x, s.weight, s.bias), fast_mode=True), s.name


@pytest.mark.parametrize("device, impl", TILED)
def test_opcheck_and_output_mask(device, impl):
    for s in dwconv_samples(device, torch.float32, cases=MASK_CASES):
        t = s.layout.patch_table
        table = (t.row0, t.stride, t.patches, t.pad, s.layout.block)
        torch.library.opcheck(OP.sparse_dwconv2d_tiled_triton.default, (s.x, s.weight, s.bias, *table))
        g = torch.randn_like(s.x)
        full = OP.sparse_dwconv2d_tiled_backward_triton(g, s.x, s.weight, *table, [True] * 3)
        torch.library.opcheck(OP.sparse_dwconv2d_tiled_backward_triton.default,
                              (g, s.x, s.weight, *table, [True, True, True]))
        for mask in ([True, False, False], [False, True, True], [False, False, True]):
            part = OP.sparse_dwconv2d_tiled_backward_triton(g, s.x, s.weight, *table, mask)
            for want, got, asked in zip(full, part, mask):
                if asked:
                    assert torch.equal(got, want), s.name
                else:
                    assert got.numel() == 0, s.name
        # deterministic: the weight gradient is summed over tiles in a fixed order
        again = OP.sparse_dwconv2d_tiled_backward_triton(g, s.x, s.weight, *table, [True] * 3)
        assert all(torch.equal(a, b) for a, b in zip(full, again)), s.name


def test_patch_table_is_the_row_arithmetic():
    """Every active site's row is row0 + i * stride + j of its patch; built once per layout (cached)."""
    for case in MASK_CASES:
        lay = make_layout(case)
        t = lay.patch_table
        assert lay.patch_table is t
        b, P = lay.block, t.pad
        assert P * b >= 7
        for pos, row in zip(lay.row_pos.tolist(), range(lay.num_rows)):
            s, rem = divmod(pos, lay.height * lay.width)
            h, w = divmod(rem, lay.width)
            ph, pw = h // b, w // b
            assert int(t.row0[s, ph + P, pw + P]) + (h % b) * int(t.stride[s, ph + P]) + w % b == row
        kept = (lay.inv_map[:, ::b, ::b] >= 0).reshape(-1).nonzero().squeeze(1)
        assert torch.equal(t.patches.long(), kept), case  # in row order
        assert (t.row0[:, :P] == -1).all() and (t.row0[:, :, -P:] == -1).all()


def test_build_layout_records_the_block():
    mask = mk.random_patch_mask(2, 7, 0.6, generator=torch.Generator().manual_seed(0))
    for res, b in ((56, 8), (28, 4), (14, 2), (7, 1)):
        assert mk.build_layout(mask, res, 19).block == b
        assert mk.build_layout(mask, res).block == b
    assert mk.build_layout(mask, (14, 28)).block is None  # 2 x 4 blocks: not square


def test_hand_made_layout_block_is_checked():
    lay = make_layout(MASK_CASES[3])
    assert lay.block == 3
    kw = dict(batch_size=lay.batch_size, height=lay.height, width=lay.width, row_pos=lay.row_pos,
              inv_map=lay.inv_map, offsets=lay.offsets)
    assert mk.SparseLayout(**kw, block=3).block == 3
    with pytest.raises(ValueError, match="partly active"):
        mk.SparseLayout(**kw, block=6)
    with pytest.raises(ValueError, match="must be an int >= 1 dividing"):
        mk.SparseLayout(**kw, block=5)


def test_patches_tiling_errors():
    s = dwconv_samples("cpu", torch.float32, cases=[MASK_CASES[3]])[0]
    with pytest.raises(ValueError, match="not impl='cpu'"):
        mk.sparse_dwconv2d(*s.args(), impl="cpu", tiling="patches")
    with pytest.raises(ValueError, match="tiling must be one of"):
        mk.sparse_dwconv2d(*s.args(), tiling="tiles")
    lay = s.layout
    loose = mk.SparseLayout(lay.batch_size, lay.height, lay.width, lay.row_pos, lay.inv_map, lay.offsets)
    with pytest.raises(ValueError, match="block=None"):
        mk.sparse_dwconv2d(s.x, s.weight, s.bias, loose, impl="ref", tiling="patches")
    with pytest.raises(ValueError, match="block=None"):
        loose.patch_table
    # the reference accepts the tiling (same maths): the same numbers
    torch.testing.assert_close(mk.sparse_dwconv2d(*s.args(), impl="ref", tiling="patches"),
                               mk.sparse_dwconv2d(*s.args(), impl="ref"))


@pytest.mark.parametrize("device, impl", TILED)
def test_compiled_with_the_layout_built_inside(device, impl):
    """torch.compile(fullgraph=True) with the layout (and so its patch table) built inside the graph, as the
    encoder does every step; forward and backward equal eager."""
    torch._dynamo.reset()
    mask = mk.random_patch_mask(2, 4, 0.75, generator=torch.Generator().manual_seed(4)).to(device)

    def f(x, w, b):
        lay = mk.build_layout(mask, 12, 4)
        return mk.sparse_dwconv2d(x, w, b, lay, impl=impl, tiling="patches")

    lay = mk.build_layout(mask, 12, 4)
    gen = torch.Generator().manual_seed(0)
    args = [torch.randn(lay.num_rows, 5, generator=gen), torch.randn(5, 1, 3, 3, generator=gen),
            torch.randn(5, generator=gen)]
    outs = []
    for fn in (f, torch.compile(f, fullgraph=True)):
        leaves = [a.to(device).requires_grad_() for a in args]
        y = fn(*leaves)
        y.pow(2).sum().backward()
        outs.append([y.detach()] + [t.grad for t in leaves])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
