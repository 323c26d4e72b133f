"""The packed layout: ordering, inverse map, static vs data-dependent builders, dense round trips."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.testing import MASK_CASES, make_layout


def _expected_positions(mask, res):
    """Reference: active sites in sample-major raster order, by brute force."""
    B, gh, gw = mask.shape
    b = res // gh
    pos = []
    for s in range(B):
        for h in range(res):
            for w in range(res):
                if not mask[s, h // b, w // b]:
                    pos.append(s * res * res + h * res + w)
    return torch.tensor(pos, dtype=torch.int32)


@pytest.mark.parametrize("case", MASK_CASES, ids=str)
def test_layout_matches_brute_force(case):
    lay = make_layout(case)
    mask = ~lay.active()[:, :: case.block, :: case.block]
    assert torch.equal(lay.row_pos, _expected_positions(mask, case.resolution))
    # inverse map: row of every active site, -1 elsewhere
    flat = lay.inv_map.reshape(-1)
    assert torch.equal(flat[lay.row_pos.long()], torch.arange(lay.num_rows, dtype=torch.int32))
    assert int((flat >= 0).sum()) == lay.num_rows
    # per-sample offsets
    counts = lay.active().flatten(1).sum(1)
    assert torch.equal(lay.offsets[1:] - lay.offsets[:-1], counts.to(torch.int32))
    assert lay.row_pos.dtype == lay.inv_map.dtype == lay.offsets.dtype == torch.int32


def test_static_and_dynamic_builders_agree():
    mask = mk.random_patch_mask(5, 7, 0.6, generator=torch.Generator().manual_seed(3))
    for res in (56, 28, 14, 7):
        a = mk.build_layout(mask, res, mk.num_kept(49, 0.6))
        b = mk.build_layout(mask, res, None)
        assert a.rows_per_sample == 19 * (res // 7) ** 2 and b.rows_per_sample is None
        for name in ("row_pos", "inv_map", "offsets"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_fcmae_keeps_19_of_49():
    assert mk.num_kept(49, 0.6) == 19
    m = mk.random_patch_mask(4, 7, 0.6)
    assert m.flatten(1).sum(1).tolist() == [30] * 4


def test_dense_round_trip_and_explicit_shape():
    # Mask the last patch row and column in every sample: upstream's dense() would shrink to 6x6.
    mask = torch.zeros(2, 7, 7, dtype=torch.bool)
    mask[:, -1, :] = True
    mask[:, :, -1] = True
    lay = mk.build_layout(mask, 7, 36)
    x = torch.randn(lay.num_rows, 5)
    d = mk.to_dense(x, lay)
    assert d.shape == (2, 5, 7, 7)
    assert d[:, :, -1, :].abs().sum() == 0 and d[:, :, :, -1].abs().sum() == 0
    assert torch.equal(mk.from_dense(d, lay), x)


def test_to_dense_is_differentiable():
    lay = make_layout(MASK_CASES[2])
    x = torch.randn(lay.num_rows, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: mk.to_dense(t, lay), (x,))
    d = torch.randn(lay.batch_size, 3, lay.height, lay.width, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda t: mk.from_dense(t, lay), (d,))


def test_layout_under_compile_has_static_shape():
    mask = mk.random_patch_mask(3, 7, 0.6, generator=torch.Generator().manual_seed(0))

    @torch.compile(fullgraph=True)
    def build(m):
        lay = mk.build_layout(m, 28, 19)
        return lay.row_pos, lay.inv_map, lay.offsets

    eager = mk.build_layout(mask, 28, 19)
    for got, want in zip(build(mask), (eager.row_pos, eager.inv_map, eager.offsets)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("bad, match", [
    (lambda: mk.build_layout(torch.zeros(2, 7), 14, 49), "3-D"),
    (lambda: mk.build_layout(torch.zeros(2, 7, 7), 14, 49), "bool or integer"),
    (lambda: mk.build_layout(torch.zeros(2, 7, 7, dtype=torch.bool), 15, 49), "multiple of the mask grid"),
    (lambda: mk.build_layout(mk.random_patch_mask(2, 7, 0.6), 14, 20), "keeps 19 patches"),
    (lambda: mk.build_layout(torch.zeros(2, 7, 7, dtype=torch.bool), 14, 50), "kept_per_sample must be in"),
    (lambda: mk.random_patch_mask(2, 7, 1.5), "mask_ratio"),
])
def test_layout_bad_input(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        bad()


def test_scatter_checks_rows():
    lay28 = mk.build_layout(mk.random_patch_mask(2, 7, 0.6), 28, 19)
    lay14 = mk.build_layout(mk.random_patch_mask(2, 7, 0.6), 14, 19)
    with pytest.raises(ValueError, match="another stage"):
        mk.to_dense(torch.randn(lay14.num_rows, 3), lay28)
    with pytest.raises(ValueError, match="batch/spatial shape"):
        mk.from_dense(torch.randn(2, 3, 14, 14), lay28)
