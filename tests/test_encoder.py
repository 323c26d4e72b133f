"""ConvNeXt V2 encoder: the state_dict does not depend on the backend, the released init, bad input. That every
backend computes the reference backend's function is tests/test_backend_parity.py's job (generated from the
backend registry)."""

import pytest
import torch

from mmearth_kernels.models import encoder
from mmearth_kernels.models.registry import BACKEND_SPECS


def test_state_dict_is_backend_independent():
    a, b = (encoder("atto", backend=name) for name in list(BACKEND_SPECS)[:2])
    assert list(a.state_dict()) == list(b.state_dict())
    b.load_state_dict(a.state_dict())
    assert "stages.0.0.grn.gamma" in a.state_dict() and a.state_dict()["stages.0.0.grn.gamma"].shape == (1, 1, 1, 160)


def test_mmearth_init():
    m = encoder("atto")
    m.init_weights("mmearth")
    assert 0.8 < m.stages[0][0].dwconv.weight.std() < 1.2     # std 1.0 quirk, as released
    assert 0.8 < m.stages[0][0].pwconv1.weight.std() < 1.2
    assert m.downsample[1].conv.weight.std() < 0.05
    assert m.stages[0][0].grn.gamma.abs().sum() == 0


@pytest.mark.parametrize("kwargs, call, match", [
    (dict(), dict(x=torch.randn(2, 13, 56, 56)), r"x must be \[B, 12, 56, 56\]"),
    (dict(), dict(x=torch.randn(2, 12, 64, 64)), "img_size"),
    (dict(), dict(mask=torch.zeros(2, 8, 8, dtype=torch.bool)), r"mask must be \[B, 7, 7\]"),
    (dict(size="gigantic"), None, "size must be one of"),
    (dict(stem="fancy"), None, "stem must be one of"),
    (dict(backend="minkowskii"), None, "backend must be one of"),
    (dict(grn_stats="global"), None, "grn_stats must be one of"),
    (dict(patch_size=12), None, "multiple of 8"),
    (dict(img_size=60), None, "multiple of patch_size"),
])
def test_bad_input(kwargs, call, match):
    with pytest.raises(ValueError, match=match):
        m = encoder(**({"size": "atto"} | kwargs))
        args = dict(x=torch.randn(2, 12, 56, 56), mask=None) | (call or {})
        m(args["x"], args["mask"])
    with pytest.raises(ValueError, match="init must be"):
        encoder("atto").init_weights("xavier")
