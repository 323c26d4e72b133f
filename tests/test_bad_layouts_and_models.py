"""Corrupt layouts never read outside the tensors and get a clear error on CPU; the encoder and MP-MAE check
masks and targets once, naming the argument or task; valid edge cases (NaN in masked pixels, everything
masked, batch 0) are right on every backend; GRN's NaN behaviour is the same in every impl."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.models import MPMAE, encoder
from mmearth_kernels.testing import training_batch

from conftest import cpu_impls

MASK = mk.random_patch_mask(2, 7, 0.6, generator=torch.Generator().manual_seed(0))
LAY = mk.build_layout(MASK, 28, 19)
N = LAY.num_rows
X = torch.randn(N, 8)
W = torch.randn(8, 1, 7, 7)


def _rp(p, v):
    r = LAY.row_pos.clone()
    r[p] = v
    return r


def _im(old, new):
    m = LAY.inv_map.clone()
    m[m == old] = new
    return m


# (row_pos, inv_map, the message the C++ check gives)
CORRUPT = {
    "row_pos 2**30": (_rp(3, 2**30), LAY.inv_map, r"row_pos\[3\] = 1073741824 is not a site"),
    "row_pos B*H*W + 3": (_rp(3, 2 * 28 * 28 + 3), LAY.inv_map, "is not a site of the layout"),
    "row_pos -1": (_rp(3, -1), LAY.inv_map, r"row_pos\[3\] = -1 is not a site"),
    "row_pos -2**31": (_rp(0, -2**31), LAY.inv_map, "is not a site"),
    "row_pos duplicate": (_rp(3, int(LAY.row_pos[4])), LAY.inv_map, "row_pos and inv_map disagree"),
    "inv_map = N": (LAY.row_pos, _im(5, N), "row_pos and inv_map disagree"),
    "inv_map 2**30": (LAY.row_pos, _im(5, 2**30), "row_pos and inv_map disagree"),
    "inv_map -7 at an active site": (LAY.row_pos, _im(5, -7), "row_pos and inv_map disagree"),
    "inv_map extra active site": (LAY.row_pos, LAY.inv_map.masked_fill(LAY.inv_map < 0, 0), "inv_map marks"),
    "inv_map -5 at an inactive site": (LAY.row_pos, LAY.inv_map.masked_fill(LAY.inv_map < 0, -5),
                                       "neither -1 .inactive. nor a row"),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_layout_is_refused_by_the_cpu_kernels(name):
    rp, im, match = CORRUPT[name]
    op = torch.ops.mmearth_kernels
    with pytest.raises(RuntimeError, match=match):
        op.sparse_dwconv2d(X, W, None, rp, im)
    with pytest.raises(RuntimeError, match=match):
        op.sparse_dwconv2d_backward(X, X, W, rp, im, [True, True, True])


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_hand_made_layout_is_refused_when_made(name):
    rp, im, _ = CORRUPT[name]
    with pytest.raises(ValueError, match="SparseLayout: "):
        mk.SparseLayout(2, 28, 28, rp, im, LAY.offsets)


@pytest.mark.parametrize("field, value, match", [
    ("row_pos", LAY.row_pos.long(), "row_pos must be a 1-D int32"),
    ("inv_map", LAY.inv_map[0], "inv_map must be a 3-D int32"),
    ("offsets", LAY.offsets[:-1], "offsets must have B . 1 = 3 entries"),
    ("offsets", torch.tensor([0, 400, 300], dtype=torch.int32), "never decrease"),
    ("offsets", torch.tensor([0, 300, N], dtype=torch.int32), "sample-major"),
    ("batch_size", 3, r"inv_map must be \[B, H, W\]"),
    ("height", -1, "height must be an int >= 0"),
    ("rows_per_sample", 7, "rows_per_sample = 7"),
])
def test_hand_made_layout_fields(field, value, match):
    kw = dict(batch_size=2, height=28, width=28, row_pos=LAY.row_pos, inv_map=LAY.inv_map, offsets=LAY.offsets)
    kw[field] = value
    with pytest.raises(ValueError, match=match):
        mk.SparseLayout(**kw)


def test_a_valid_hand_made_layout_is_accepted():
    lay = mk.SparseLayout(2, 28, 28, LAY.row_pos.clone(), LAY.inv_map.clone(), LAY.offsets.clone(), 19 * 16)
    torch.testing.assert_close(mk.sparse_dwconv2d(X, W, None, lay), mk.sparse_dwconv2d(X, W, None, LAY))


@pytest.mark.triton
@pytest.mark.parametrize("name", ["row_pos 2**30", "row_pos -1", "inv_map = N", "inv_map 2**30"])
def test_triton_kernels_never_read_outside_with_a_corrupt_layout(name):
    """The GPU kernels get no host-side check (it would sync): out-of-range entries read as inactive."""
    from mmearth_kernels import triton_kernels as _triton

    if not _triton.INTERPRET:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 before import (scripts/test.sh runs it as its own step)")
    from mmearth_kernels.triton_kernels import sparse_dwconv as kernels

    rp, im, _ = CORRUPT[name]
    clean = kernels.forward(X, W, None, LAY.row_pos, LAY.inv_map)
    y = kernels.forward(X, W, None, rp, im)
    dx, dw, db = kernels.backward(X, X, W, rp, im)
    assert all(torch.isfinite(t).all() for t in (y, dx, dw, db))
    if name.startswith("inv_map"):  # the corrupt site (row 5) reads as inactive: its neighbours lose it
        near = (mk.to_dense(torch.ones(N, 1), LAY)[:, 0] > 0)
        assert near.any() and not torch.equal(y, clean)


@pytest.mark.triton
def test_triton_grn_clamps_corrupt_offsets():
    from mmearth_kernels import triton_kernels as _triton

    if not _triton.INTERPRET:
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 before import (scripts/test.sh runs it as its own step)")
    from mmearth_kernels.triton_kernels import grn as kernels

    for off in ([0, 10**6, N], [0, -50, N], [5, 2, N + 99]):
        y, g = kernels.forward(X, torch.ones(8), torch.zeros(8), torch.tensor(off, dtype=torch.int32), 1e-6, False)
        assert torch.isfinite(y).all() and torch.isfinite(g).all()


# -- GRN and NaN ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["ref", *[i for i in cpu_impls("grn") if i != "triton"],
                                  pytest.param("triton", marks=pytest.mark.triton)])
def test_grn_nan_makes_its_sample_nan_in_every_impl(impl):
    if impl == "triton":
        from mmearth_kernels import triton_kernels as _triton

        if not _triton.INTERPRET:
            pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 before import")
    x = X.clone()
    x[3, 2] = float("nan")  # row 3 is in sample 0
    y = mk.grn(x, torch.ones(8), torch.zeros(8), LAY, impl=impl)
    first = int(LAY.offsets[1])
    assert torch.isnan(y[:first]).all(), "the NaN sample is NaN throughout"
    assert torch.isfinite(y[first:]).all(), "the other sample is untouched"


# -- the encoder and MP-MAE -------------------------------------------------------------------------------
def _mpmae(backend="sparse", **kw):
    torch.manual_seed(0)
    return MPMAE("atto", img_size=16, patch_size=8, decoder_dim=16, backend=backend, init="standard", **kw)


def _batch(model, B=2):
    mb = training_batch(B, 16, model.tasks)
    mask, kept = model.random_mask(B, generator=torch.Generator().manual_seed(1))
    return mb, mask, kept


MASK_CASES = {
    "uint8 0/2": (lambda m: (m.to(torch.uint8) * 2), None, ValueError, "only 0 and 1"),
    "float": (lambda m: m.float(), None, TypeError, "bool or integer 0/1"),
    "wrong grid": (lambda m: m[:, :1], None, ValueError, r"mask must be \[B, 2, 2\]"),
    "wrong batch": (lambda m: m[:1], None, ValueError, r"mask must be \[B, 2, 2\] = \[2, 2, 2\]"),
    "kept inconsistent": (lambda m: m, 3, ValueError, "kept=3 but sample 0 of the mask keeps 1"),
    "kept out of range": (lambda m: m, 9, ValueError, r"kept must be an int in \[0, 4\]"),
    "kept a float": (lambda m: m, 1.0, ValueError, "kept must be an int"),
    "not a tensor": (lambda m: m.tolist(), None, TypeError, "mask must be a torch.Tensor"),
}


@pytest.mark.parametrize("backend", ["dense", "dense-plain", "sparse"])
@pytest.mark.parametrize("name", sorted(MASK_CASES))
def test_bad_masks(name, backend):
    change, kept, exc, match = MASK_CASES[name]
    model = _mpmae(backend)
    mb, mask, good_kept = _batch(model)
    with pytest.raises(exc, match=match):
        model(mb["input"], mb, change(mask), kept if kept is not None else good_kept)


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_integer_masks_equal_bool_masks(backend):
    model = _mpmae(backend)
    mb, mask, kept = _batch(model)
    want = model(mb["input"], mb, mask, kept)["loss"]
    for m, k in ((mask.long(), None), (mask.to(torch.uint8), kept), (mask.long(), kept)):
        torch.testing.assert_close(model(mb["input"], mb, m, k)["loss"], want)


TARGET_CASES = {
    "S2 at 24 px": ("sentinel2", lambda t: torch.randn(2, 12, 24, 24), ValueError, "target 'sentinel2' must be"),
    "S2 channels": ("sentinel2", lambda t: t[:, :5], ValueError, r"\[2, 12, 16, 16\]"),
    "S1 batch": ("sentinel1", lambda t: t[:1], ValueError, "target 'sentinel1'"),
    "DW float": ("dynamic_world", lambda t: t.float(), TypeError, "target 'dynamic_world' must hold integer"),
    "DW class 9": ("dynamic_world", lambda t: t.clamp_min(0) * 0 + 9, ValueError, "holds class 9"),
    "ESA class -2": ("esa_worldcover", lambda t: t * 0 - 2, ValueError, "holds class -2"),
    "biome 14": ("biome", lambda t: t * 0 + 14, ValueError, "target 'biome' holds class 14"),
    "eco_region float": ("eco_region", lambda t: t.float(), TypeError, "integer class indices"),
    "era5 shape": ("era5", lambda t: t[:, :3], ValueError, "target 'era5'"),
    "lat int": ("lat", lambda t: t.long(), TypeError, "target 'lat' must be floating point"),
    "month not a tensor": ("month", lambda t: t.tolist(), TypeError, "target 'month' must be a torch.Tensor"),
    "aster missing": ("aster", None, ValueError, r"targets lack task\(s\) \['aster'\]"),
}


@pytest.mark.parametrize("name", sorted(TARGET_CASES))
def test_bad_targets(name):
    task, change, exc, match = TARGET_CASES[name]
    model = _mpmae()
    mb, mask, kept = _batch(model)
    if change is None:
        del mb[task]
    else:
        mb[task] = change(mb[task])
    with pytest.raises(exc, match=match):
        model(mb["input"], mb, mask, kept)


@pytest.mark.parametrize("x, exc, match", [
    (torch.randn(2, 12, 24, 24), ValueError, r"x must be \[B, 12, 16, 16\]"),
    (torch.randn(2, 3, 16, 16), ValueError, "in_chans"),
    (torch.zeros(2, 12, 16, 16, dtype=torch.long), TypeError, "floating-point"),
])
def test_bad_encoder_input(x, exc, match):
    enc = encoder("atto", img_size=16, patch_size=8)
    with pytest.raises(exc, match=match):
        enc(x, MASK[:, :2, :2], None)


@pytest.mark.parametrize("backend", ["dense", "dense-plain", "sparse"])
def test_nan_in_masked_pixels_changes_nothing(backend):
    model = _mpmae(backend)
    mb, mask, kept = _batch(model)
    want = model(mb["input"], mb, mask, kept)["loss"]
    hidden = mask.repeat_interleave(8, 1).repeat_interleave(8, 2)[:, None].expand_as(mb["input"])
    mb["input"] = mb["input"].masked_fill(hidden, float("nan"))
    got = model(mb["input"], mb, mask, kept)["loss"]
    assert torch.isfinite(got) and torch.equal(got, want)


def _minkowski():
    from mmearth_kernels.models import minkowski

    return pytest.param("minkowski", marks=pytest.mark.skipif(
        not minkowski.available(), reason="MinkowskiEngine is not installed: run scripts/build_minkowski.sh (CI does)"))


@pytest.mark.parametrize("backend", ["dense", "dense-plain", "sparse", _minkowski()])
@pytest.mark.parametrize("batch, masked", [(0, None), (2, True), (3, False)], ids=["batch 0", "all masked",
                                                                                 "nothing masked"])
def test_edge_batches_train_on_every_backend(backend, batch, masked):
    """A mask given to forward may hide everything or nothing (a mask_ratio that does is refused when the model
    is built: MP-MAE's own masks always keep and hide something)."""
    model = _mpmae(backend)
    mb, mask, kept = _batch(model, batch)
    if masked is not None:
        mask, kept = torch.full_like(mask, masked), 0 if masked else model.grid ** 2
    out = model(mb["input"], mb, mask, kept)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())


def test_dense_and_sparse_agree_when_everything_is_masked():
    models = {b: _mpmae(b) for b in ("dense", "sparse")}
    mb, mask, _ = _batch(models["dense"])
    mask = torch.ones_like(mask)
    a, b = (models[k](mb["input"], mb, mask, 0)["loss"] for k in ("dense", "sparse"))
    torch.testing.assert_close(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: the CUDA kernels' guards need one "
                                                          "(benchmarks/gpu_check.sh runs them)")
@pytest.mark.parametrize("impl", ["cuda", "triton"])
@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_gpu_kernels_never_read_outside_with_a_corrupt_layout(name, impl):
    """On a GPU no check reads the layout (a host sync): the kernels must survive any values."""
    rp, im, _ = CORRUPT[name]
    x, w = X.cuda(), W.cuda()
    op = torch.ops.mmearth_kernels
    fwd = op.sparse_dwconv2d if impl == "cuda" else op.sparse_dwconv2d_triton
    bwd = op.sparse_dwconv2d_backward if impl == "cuda" else op.sparse_dwconv2d_backward_triton
    y = fwd(x, w, None, rp.cuda(), im.cuda())
    dx, dw, db = bwd(x, x, w, rp.cuda(), im.cuda(), [True, True, True])
    torch.cuda.synchronize()  # an illegal access would surface here
    assert all(torch.isfinite(t).all() for t in (y, dx, dw, db))
    off = torch.tensor([0, 10**6, N], dtype=torch.int32, device="cuda")
    gfwd = op.grn if impl == "cuda" else op.grn_triton
    g, _ = gfwd(x, torch.ones(8, device="cuda"), torch.zeros(8, device="cuda"), off, 1e-6, False)
    torch.cuda.synchronize()
    assert torch.isfinite(g).all()


# -- mask and layout arguments ------------------------------------------------------------------------------
ARGS = {
    "random_patch_mask batch -1": (lambda: mk.random_patch_mask(-1, 7, 0.6), ValueError,
                                   "batch_size must be an int >= 0, got -1"),
    "random_patch_mask batch 2.0": (lambda: mk.random_patch_mask(2.0, 7, 0.6), TypeError,
                                    r"batch_size must be an int >= 0, got 2.0 \(float\)"),
    "random_patch_mask grid 0": (lambda: mk.random_patch_mask(2, 0, 0.6), ValueError, "grid must be a positive int"),
    "random_patch_mask grid -3": (lambda: mk.random_patch_mask(2, -3, 0.6), ValueError, "grid must be a positive int"),
    "random_patch_mask grid 7.0": (lambda: mk.random_patch_mask(2, 7.0, 0.6), TypeError, "grid must be a positive int"),
    "random_patch_mask grid (7, 0)": (lambda: mk.random_patch_mask(2, (7, 0), 0.6), ValueError,
                                      r"grid\[1\] must be a positive int, got 0"),
    "random_patch_mask ratio True": (lambda: mk.random_patch_mask(2, 7, True), ValueError,
                                     r"mask_ratio must be in \[0, 1\], got True"),
    "random_patch_mask ratio nan": (lambda: mk.random_patch_mask(2, 7, float("nan")), ValueError,
                                    r"mask_ratio must be in \[0, 1\], got nan"),
    "num_kept of -1 patches": (lambda: mk.num_kept(-1, 0.5), ValueError, "num_patches must be an int >= 0, got -1"),
    "build_layout resolution 28.0": (lambda: mk.build_layout(MASK, 28.0, 19), TypeError,
                                     "resolution must be a positive int or a pair of them, got 28.0"),
    "build_layout resolution 0": (lambda: mk.build_layout(MASK, 0, 19), ValueError, "resolution must be a positive"),
    "build_layout resolution (28, -28)": (lambda: mk.build_layout(MASK, (28, -28), 19), ValueError,
                                          r"resolution\[1\] must be a positive int, got -28"),
    "build_layout kept True": (lambda: mk.build_layout(MASK, 28, True), TypeError,
                               "kept_per_sample must be an int >= 0 or None, got True"),
    "build_layout kept 19.0": (lambda: mk.build_layout(MASK, 28, 19.0), TypeError, "kept_per_sample must be an int"),
}


@pytest.mark.parametrize("name", sorted(ARGS))
def test_bad_mask_and_layout_arguments(name):
    call, exc, match = ARGS[name]
    with pytest.raises(exc, match=match):
        call()


def test_numpy_scalars_make_the_same_masks_and_layouts():
    import numpy as np

    g = torch.Generator().manual_seed(0)
    a = mk.random_patch_mask(np.int64(2), np.int32(7), np.float32(0.6), generator=g)
    assert torch.equal(a, MASK) and mk.num_kept(np.int64(49), np.float64(0.6)) == 19
    lay = mk.build_layout(MASK, np.int64(28), np.int16(19))
    assert torch.equal(lay.row_pos, LAY.row_pos) and lay.num_rows == LAY.num_rows
