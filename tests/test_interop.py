"""Checkpoint interop: released sparse (MinkowskiEngine layout) checkpoints in, the upstream dense layout out
(timm both ways: test_timm.py; released files as saved: test_checkpoint_files.py)."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.models import encoder
from mmearth_kernels.interop import export_dense, load_sparse_checkpoint

from _checkpoints import me_kernel, to_me_checkpoint
from _encoder_helpers import model, plain_convnextv2


@pytest.mark.parametrize("stem, img, patch", [("mmearth", 56, 8), ("mmearth", 112, 16), ("original", 224, 32),
                                              ("original", 56, 8)])
def test_load_released_sparse_checkpoint(tmp_path, stem, img, patch):
    src = model(stem=stem, img_size=img, patch_size=patch)
    path = tmp_path / "checkpoint-199.pth"
    torch.save({"model": to_me_checkpoint(src), "epoch": 199}, path)
    dst = encoder("atto", stem=stem, img_size=img, patch_size=patch)
    unused = load_sparse_checkpoint(dst, str(path))
    assert sorted(unused) == ["mask_token", "proj.weight"]
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(2, 12, img, img)
    mask = mk.random_patch_mask(2, 7, 0.6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(dst(x, mask, 19), src(x, mask, 19))


def test_me_kernel_convention_is_cross_correlation():
    """A sparse 3x3 conv computed straight from the ME-layout kernel (its definition) equals our loaded
    encoder's stem conv: the mapping is right, not merely self-consistent."""
    torch.manual_seed(0)
    w = torch.randn(40, 3, 3, 3)
    me = me_kernel(w)
    x = torch.randn(1, 3, 6, 6)
    y = torch.zeros(1, 40, 6, 6)
    for h in range(6):
        for v in range(6):
            for d0 in (-1, 0, 1):
                for d1 in (-1, 0, 1):
                    if 0 <= h + d0 < 6 and 0 <= v + d1 < 6:
                        y[0, :, h, v] += x[0, :, h + d0, v + d1] @ me[(d0 + 1) + 3 * (d1 + 1)]
    m = encoder("atto", in_chans=3)
    sd = {"encoder.initial_conv.0.kernel": me}
    load_sparse_checkpoint(m, sd, strict=False)
    torch.testing.assert_close(torch.nn.functional.conv2d(x, m.stem.conv.weight, padding=1), y)


def test_strict_loading_errors():
    m = encoder("atto")
    with pytest.raises(ValueError, match="lacks encoder parameters"):
        load_sparse_checkpoint(m, {"encoder.stem.0.bias": torch.zeros(1, 40)})
    orig = to_me_checkpoint(model(stem="original"))
    with pytest.raises(ValueError, match="original stem but the encoder was built with stem='mmearth'"):
        load_sparse_checkpoint(m, orig)
    with pytest.raises(ValueError, match="different model size"):
        load_sparse_checkpoint(encoder("femto"), to_me_checkpoint(model()))
    with pytest.raises(TypeError, match="path or a state_dict"):
        load_sparse_checkpoint(m, 42)


def test_export_mmearth_layout_runs_as_upstream_dense_model():
    m = model()
    sd = export_dense(m, "mmearth")
    assert "initial_conv.0.weight" in sd and "stem.0.weight" in sd and "downsample_layers.2.1.weight" in sd
    assert sd["stages.3.1.grn.gamma"].shape == (1, 1, 1, 1280)
    assert len(sd) == len(m.state_dict())
    # Re-import by name (the upstream dense module's names map back one to one) and compare forwards.
    back = encoder("atto")
    mapping = dict(zip(export_dense(back, "mmearth").keys(), back.state_dict().keys()))
    back.load_state_dict({mapping[k]: v for k, v in sd.items()})
    x = torch.randn(2, 12, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(plain_convnextv2(back, x), plain_convnextv2(m, x))


def test_export_layout_names_the_choices():
    with pytest.raises(ValueError, match="layout must be one of"):
        export_dense(model(), "onnx")
