"""The ``minkowski`` backend (MinkowskiEngine): present where CI requires it, and a clear install hint where it is
missing. That it computes the reference backend's function is tests/test_backend_parity.py's job.

Needs MinkowskiEngine: `bash scripts/build_minkowski.sh` (CI builds it, cached, and sets
MMEARTH_REQUIRE_MINKOWSKI=1 so a missing engine fails instead of skipping).
"""

import os
import sys

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.models import minkowski


HAVE_ME = minkowski.available()
needs_me = pytest.mark.skipif(not HAVE_ME, reason="MinkowskiEngine is not installed: run scripts/build_minkowski.sh "
                                                   "(CI builds it)")


def test_engine_present_when_required():
    if os.environ.get("MMEARTH_REQUIRE_MINKOWSKI") != "1":
        pytest.skip("MMEARTH_REQUIRE_MINKOWSKI is not set (only CI demands MinkowskiEngine)")
    assert HAVE_ME, "CI built MinkowskiEngine but it does not import"


def test_missing_engine_gives_install_guidance(monkeypatch):
    minkowski.engine.cache_clear()
    monkeypatch.setitem(sys.modules, "MinkowskiEngine", None)  # makes the import fail
    try:
        m = mk.models.encoder("atto", backend="minkowski")
        with pytest.raises(RuntimeError, match="build_minkowski.sh"):
            m(torch.randn(1, 12, 56, 56))
    finally:
        minkowski.engine.cache_clear()
