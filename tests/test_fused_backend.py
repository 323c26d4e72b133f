"""The sparse-fused backend equals the reference backends: encoder output and every gradient, the MP-MAE loss
and every gradient, with each impl of its fused op (Triton under the interpreter)."""

import pytest
import torch

from mmearth_kernels.models.backends import BACKENDS, SparseFused

from _compare import assert_grads_close
from _encoder_helpers import SPARSE_IMPL, mask_of, model, run
from conftest import cpu_impls
from _mpmae_helpers import loss_and_grads, mpmae_model, targets

TRITON = pytest.param("triton", marks=pytest.mark.triton, id="triton")


def _require(impl):
    if impl == "triton" and "triton" not in cpu_impls("grn"):
        pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 before import (scripts/test.sh runs it as its own step)")


def test_registered():
    assert BACKENDS["sparse-fused"] is SparseFused


@pytest.mark.parametrize("impl", ["ref", SPARSE_IMPL])
@pytest.mark.parametrize("stats", ["per_sample", "batch"])
def test_encoder_equals_sparse_and_dense(impl, stats):
    m = model(grn_stats=stats, impl=impl)
    x = torch.randn(3, 12, 56, 56)
    mask, kept = mask_of(3, 0.6, seed=4, all_masked_sample=True)
    yd, gd = run(m, "dense", x, mask, kept)
    ys, gs = run(m, "sparse", x, mask, kept)
    yf, gf = run(m, "sparse-fused", x, mask, kept)
    # the fused C++ GELU is a polynomial erf within ~2e-7 of torch's: after 12 blocks the outputs differ like
    # dense and sparse do (sums in another order)
    torch.testing.assert_close(yf, ys, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(yf, yd, atol=2e-4, rtol=2e-4)
    assert_grads_close(gf, gs)
    assert_grads_close(gf, gd)


@pytest.mark.parametrize("impl", [TRITON])
def test_encoder_fused_triton_equals_dense_small(impl):
    """The fused Triton kernel inside the encoder (a small encoder: the interpreter is slow)."""
    _require(impl)
    m = model(depths=(1, 1, 1, 1), dims=(8, 16, 8, 16), img_size=16, patch_size=8, impl=impl)
    x = torch.randn(2, 12, 16, 16)
    mask = torch.tensor([[[0, 1], [1, 0]], [[1, 1], [1, 0]]], dtype=torch.bool)
    yd, gd = run(m, "dense", x, mask, None)
    yf, gf = run(m, "sparse-fused", x, mask, None)
    torch.testing.assert_close(yf, yd, atol=2e-4, rtol=2e-4)
    assert_grads_close(gf, gd)


@pytest.mark.parametrize("all_masked_sample", [False, True])
def test_mpmae_loss_and_gradients_equal_sparse_and_dense(all_masked_sample):
    m = mpmae_model()
    x, t = torch.randn(3, 12, 56, 56), targets(3)
    mask, kept = m.random_mask(3, generator=torch.Generator().manual_seed(2))
    if all_masked_sample:
        mask[0], kept = True, None
    out = {}
    for backend in ("dense", "sparse", "sparse-fused"):
        m.encoder.backend = backend
        out[backend] = loss_and_grads(m, x, t, mask, kept)
    (lf, gf), (ls, gs), (ld, gd) = out["sparse-fused"], out["sparse"], out["dense"]
    assert torch.isfinite(lf["loss"])
    torch.testing.assert_close(lf["loss"], ls["loss"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lf["loss"], ld["loss"], rtol=1e-5, atol=1e-5)
    assert set(gf) == set(gd)
    assert_grads_close(gf, gs)
    assert_grads_close(gf, gd)
