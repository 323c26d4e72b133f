"""sparse_dwconv2d(tiling="patches")'s own semantics (tests/test_op_conformance.py checks it against the reference on
every mask case, dtype, gradcheck, opcheck and compile): 8 px blocks and a 15x15 kernel, a deterministic weight
gradient, the layout's per-patch table and block, the tiling's errors."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.testing import MASK_CASES, dwconv_samples, make_layout

from conftest import device_impls

TILED = [p for p in device_impls("sparse_dwconv2d") if p.values[1] == "triton"]
OP = torch.ops.mmearth_kernels


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
def test_weight_gradient_is_deterministic(device, impl):
    """The weight gradient is summed over tiles in a fixed order: the same bits every call."""
    for s in dwconv_samples(device, torch.float32, cases=MASK_CASES[1:5]):
        t = s.layout.patch_table
        table = (t.row0, t.stride, t.patches, t.pad, s.layout.block)
        g = torch.randn_like(s.x)
        one = OP.sparse_dwconv2d_tiled_backward_triton(g, s.x, s.weight, *table, [True] * 3)
        again = OP.sparse_dwconv2d_tiled_backward_triton(g, s.x, s.weight, *table, [True] * 3)
        assert all(torch.equal(a, b) for a, b in zip(one, again)), s.name


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
