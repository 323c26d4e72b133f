"""The ``minkowski`` backend (MinkowskiEngine, CPU) computes what the dense and sparse backends do.

Needs MinkowskiEngine: `bash scripts/build_minkowski.sh` (CI builds it, cached, and sets
MMEARTH_REQUIRE_MINKOWSKI=1 so a missing engine fails instead of skipping).
"""

import os
import sys

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.models import minkowski

from _compare import assert_grads_close
from _encoder_helpers import mask_of, model, run

HAVE_ME = minkowski.available()
needs_me = pytest.mark.skipif(not HAVE_ME, reason="MinkowskiEngine is not installed: run scripts/build_minkowski.sh "
                                                   "(CI builds it)")


def test_engine_present_when_required():
    if os.environ.get("MMEARTH_REQUIRE_MINKOWSKI") != "1":
        pytest.skip("MMEARTH_REQUIRE_MINKOWSKI is not set (only CI demands MinkowskiEngine)")
    assert HAVE_ME, "CI built MinkowskiEngine but it does not import"


@needs_me
@pytest.mark.slow
@pytest.mark.parametrize("stem, stats, all_masked_sample", [("mmearth", "batch", False),
                                                              ("mmearth", "per_sample", True),
                                                              ("original", "batch", False)])
def test_three_backends_agree(stem, stats, all_masked_sample):
    m = model(stem=stem, grn_stats=stats, depths=(1, 1, 2, 1), dims=(16, 24, 32, 40))
    x = torch.randn(2, 12, 56, 56)
    mask, kept = mask_of(2, 0.6, seed=9, all_masked_sample=all_masked_sample)
    yd, gd = run(m, "dense", x, mask, kept)
    ym, gm = run(m, "minkowski", x, mask, kept)
    ys, gs = run(m, "sparse", x, mask, kept)
    torch.testing.assert_close(ym, yd, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(ys, yd, atol=2e-4, rtol=2e-4)
    assert_grads_close(gm, gd, what="minkowski")
    assert_grads_close(gs, gd, what="sparse")


def test_missing_engine_gives_install_guidance(monkeypatch):
    minkowski.engine.cache_clear()
    monkeypatch.setitem(sys.modules, "MinkowskiEngine", None)  # makes the import fail
    try:
        m = mk.models.encoder("atto", backend="minkowski")
        with pytest.raises(RuntimeError, match="build_minkowski.sh"):
            m(torch.randn(1, 12, 56, 56))
    finally:
        minkowski.engine.cache_clear()
