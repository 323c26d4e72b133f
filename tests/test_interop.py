"""Checkpoint interop: released sparse (MinkowskiEngine layout) checkpoints in, dense layouts out."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels.models import encoder
from mmearth_kernels.models.interop import export_dense, load_sparse_checkpoint

from _encoder_helpers import model, plain_convnextv2


def _me_kernel(weight, depthwise=False):
    """ME layout by its definition: offset index k = kh + K * kw (H fastest); [K*K, Cin, Cout] or [K*K, C]."""
    cout, cin, K, _ = weight.shape
    if depthwise:
        out = torch.empty(K * K, cout)
        for kh in range(K):
            for kw in range(K):
                out[kh + K * kw] = weight[:, 0, kh, kw]
        return out
    out = torch.empty(K * K, cin, cout)
    for kh in range(K):
        for kw in range(K):
            out[kh + K * kw] = weight[:, :, kh, kw].t()
    return out[0] if K == 1 else out  # ME keeps a kernel of volume 1 as [Cin, Cout]


def _to_me_checkpoint(m):
    """A state_dict in the released sparse FCMAE layout (encoder.* + decoder keys), built from m."""
    sd = {}
    st = m.stem
    b = lambda t: t.reshape(1, -1)  # noqa: E731  (ME biases are [1, C])
    if st.kind == "mmearth":
        sd["encoder.initial_conv.0.kernel"] = _me_kernel(st.conv.weight)
        sd["encoder.initial_conv.0.bias"] = b(st.conv.bias)
        sd["encoder.initial_conv.1.ln.weight"], sd["encoder.initial_conv.1.ln.bias"] = st.norm1.weight, st.norm1.bias
        sd["encoder.stem.0.kernel"] = _me_kernel(st.dwconv.weight, depthwise=True)
        sd["encoder.stem.0.bias"] = b(st.dwconv.bias)
        sd["encoder.stem.1.ln.weight"], sd["encoder.stem.1.ln.bias"] = st.norm2.weight, st.norm2.bias
    else:
        sd["encoder.stem_orig.0.kernel"], sd["encoder.stem_orig.0.bias"] = _me_kernel(st.conv.weight), b(st.conv.bias)
        sd["encoder.stem_orig.1.ln.weight"], sd["encoder.stem_orig.1.ln.bias"] = st.norm.weight, st.norm.bias
    for i in range(1, 4):
        ds = m.downsample[i]
        sd[f"encoder.downsample_layers.{i - 1}.0.ln.weight"] = ds.norm.weight
        sd[f"encoder.downsample_layers.{i - 1}.0.ln.bias"] = ds.norm.bias
        sd[f"encoder.downsample_layers.{i - 1}.1.kernel"] = _me_kernel(ds.conv.weight)
        sd[f"encoder.downsample_layers.{i - 1}.1.bias"] = b(ds.conv.bias)
    for i, stage in enumerate(m.stages):
        for j, blk in enumerate(stage):
            p = f"encoder.stages.{i}.{j}."
            sd[p + "dwconv.kernel"] = _me_kernel(blk.dwconv.weight, depthwise=True)
            sd[p + "dwconv.bias"] = b(blk.dwconv.bias)
            sd[p + "norm.ln.weight"], sd[p + "norm.ln.bias"] = blk.norm.weight, blk.norm.bias
            sd[p + "pwconv1.linear.weight"], sd[p + "pwconv1.linear.bias"] = blk.pwconv1.weight, blk.pwconv1.bias
            sd[p + "grn.gamma"], sd[p + "grn.beta"] = blk.grn.gamma.reshape(1, -1), blk.grn.beta.reshape(1, -1)
            sd[p + "pwconv2.linear.weight"], sd[p + "pwconv2.linear.bias"] = blk.pwconv2.weight, blk.pwconv2.bias
    sd["proj.weight"] = torch.randn(512, m.dims[-1], 1, 1)
    sd["mask_token"] = torch.zeros(1, 512, 1, 1)
    return {k: v.detach().clone() for k, v in sd.items()}


@pytest.mark.parametrize("stem, img, patch", [("mmearth", 56, 8), ("mmearth", 112, 16), ("original", 224, 32),
                                              ("original", 56, 8)])
def test_load_released_sparse_checkpoint(tmp_path, stem, img, patch):
    src = model(stem=stem, img_size=img, patch_size=patch)
    path = tmp_path / "checkpoint-199.pth"
    torch.save({"model": _to_me_checkpoint(src), "epoch": 199}, path)
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
    me = _me_kernel(w)
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
    orig = _to_me_checkpoint(model(stem="original"))
    with pytest.raises(ValueError, match="original stem but the encoder was built with stem='mmearth'"):
        load_sparse_checkpoint(m, orig)
    with pytest.raises(ValueError, match="different model size"):
        load_sparse_checkpoint(encoder("femto"), _to_me_checkpoint(model()))
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


def test_export_timm_layout():
    m = model(stem="original", img_size=224, patch_size=32)
    sd = export_dense(m, "timm")
    assert sd["stem.0.weight"].shape == (40, 12, 4, 4) and sd["stem.1.weight"].shape == (40,)
    assert sd["stages.1.downsample.1.weight"].shape == (80, 40, 2, 2)
    assert sd["stages.2.blocks.5.conv_dw.weight"].shape == (160, 1, 7, 7)
    assert sd["stages.2.blocks.5.mlp.grn.weight"].shape == (640,)
    assert sd["stages.3.blocks.1.mlp.fc2.weight"].shape == (320, 1280)
    assert not any(k.startswith("downsample_layers") for k in sd)
    with pytest.raises(ValueError, match="no MMEarth stem"):
        export_dense(model(), "timm")
    with pytest.raises(ValueError, match="layout must be"):
        export_dense(m, "onnx")
