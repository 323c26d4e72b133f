"""timm's ConvNeXt V2 both ways, against the real library: strict loads, equal features, round trips."""

import os

import pytest
import torch

from mmearth_kernels.interop import CONV_MLP_SIZES, adapt_stem, export_dense, load_timm, save_file
from mmearth_kernels.models import encoder
from mmearth_kernels.models.convnextv2 import SIZES

from _encoder_helpers import SPARSE_IMPL

timm = pytest.importorskip("timm", reason="timm is not installed (pip install timm; CI installs it)") \
    if not os.environ.get("MMEARTH_REQUIRE_INTEROP") else __import__("timm")

GEOMETRIES = [pytest.param(224, 32, 3, id="224-32-rgb"), pytest.param(56, 8, 12, id="56-8-s2")]


def _ours(size, img, patch, chans, seed=0):
    torch.manual_seed(seed)
    e = encoder(size, stem="original", img_size=img, patch_size=patch, in_chans=chans, impl=SPARSE_IMPL)
    with torch.no_grad():
        for p in e.parameters():  # non-zero everywhere (GRN starts at zero)
            p.add_(0.1 * torch.randn_like(p))
    return e


def _timm(size, patch, chans):
    return timm.create_model(f"convnextv2_{size}", pretrained=False, num_classes=0, patch_size=patch // 8,
                             in_chans=chans).eval()


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("img, patch, chans", GEOMETRIES)
@pytest.mark.parametrize("size", ["atto", "tiny"])
def test_export_loads_strictly_into_timm_with_equal_features(size, img, patch, chans):
    ours = _ours(size, img, patch, chans)
    model = _timm(size, patch, chans)
    model.load_state_dict(export_dense(ours, "timm"), strict=True)
    x = torch.randn(2, chans, img, img, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model.forward_features(x)
        for backend in ("dense", "sparse"):
            ours.backend = backend
            assert _rel(ours(x), want) <= 1e-5, backend


@pytest.mark.parametrize("size", list(SIZES))
def test_every_size_has_timms_keys_and_shapes(size):
    """Built on the meta device (no memory, no time): names and shapes only, for all eight sizes."""
    with torch.device("meta"):
        ours = encoder(size, stem="original", img_size=224, patch_size=32, in_chans=3)
        want = timm.create_model(f"convnextv2_{size}", num_classes=0).state_dict()
    got = export_dense(ours, "timm")
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in want.items()}
    assert (got["stages.0.blocks.0.mlp.fc1.weight"].dim() == 4) == (size in CONV_MLP_SIZES)


def test_timm_to_ours_to_timm_round_trip(tmp_path):
    src = _timm("atto", 32, 3)
    with torch.no_grad():
        for name, p in src.named_parameters():
            if not name.startswith("head."):
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path / "convnextv2_atto.safetensors"
    save_file(src.state_dict(), str(path))  # as the hub ships timm weights
    ours = encoder("atto", stem="original", img_size=224, patch_size=32, in_chans=3, backend="dense")
    report = load_timm(ours, str(path))
    assert report == {"adapted": [], "unused": ["head.norm.bias", "head.norm.weight"]}
    back = export_dense(ours, "timm")
    for k, v in src.state_dict().items():
        assert torch.equal(back[k], v), k
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert _rel(ours(x), src.forward_features(x)) <= 1e-5
    assert load_timm(encoder("atto", stem="original", img_size=224, patch_size=32, in_chans=3), src)["adapted"] == []


@pytest.mark.parametrize("chans", [1, 2, 4, 12])
def test_channel_adaptation_is_timms_rule(chans):
    from timm.models import adapt_input_conv

    w = torch.randn(40, 3, 4, 4)
    got, notes = adapt_stem(w, chans, 4)
    torch.testing.assert_close(got, adapt_input_conv(chans, w.clone()))
    assert notes and f"-> {chans}" in notes[0] or chans == 1


def test_timm_weights_into_the_mmearth_56_8_geometry():
    """ImageNet-style weights (3 channels, 4x4 stem) into a 12-band encoder with a 1x1 stem: adapted so that a
    constant image gives the same stem response, everything else loaded as is."""
    src = _timm("atto", 32, 3)
    ours = encoder("atto", stem="original", img_size=56, patch_size=8, in_chans=12, backend="dense")
    report = load_timm(ours, src.state_dict())
    assert len(report["adapted"]) == 2 and "3 input channels -> 12" in report["adapted"][0]
    assert "4x4 patch -> 1x1" in report["adapted"][1]
    const = torch.full((1, 12, 56, 56), 0.7)
    with torch.no_grad():
        timm_stem = src.stem[0](torch.full((1, 3, 224, 224), 0.7))[0, :, 0, 0]
        torch.testing.assert_close(ours.stem.conv(const)[0, :, 0, 0], timm_stem, rtol=1e-5, atol=1e-5)
    assert torch.equal(ours.stages[3][1].pwconv2.weight, src.stages[3].blocks[1].mlp.fc2.weight[:, :, 0, 0])


def test_clear_errors():
    with pytest.raises(ValueError, match="no MMEarth stem"):
        export_dense(encoder("atto"), "timm")
    with pytest.raises(ValueError, match="no MMEarth stem"):
        load_timm(encoder("atto"), {})
    with pytest.raises(ValueError, match=r"has shape \(96, .*another ConvNeXt V2 size\? the encoder is depths"):
        load_timm(encoder("atto", stem="original"), _timm("tiny", 32, 3).state_dict())
    with pytest.raises(ValueError, match="lack"):
        load_timm(encoder("atto", stem="original"), {"stem.0.weight": torch.zeros(40, 3, 4, 4)})
    with pytest.raises(ValueError, match="not a multiple"):
        adapt_stem(torch.zeros(40, 3, 4, 4), 3, 3)


@pytest.mark.slow
def test_cli_both_ways_timm_weights_in_timm_model_out(tmp_path, capsys):
    """The README's commands: pretrain from a timm file (--stem original --init-from timm:FILE), export with
    --layout timm to .safetensors, strict-load that into timm (patch_size=1, in_chans=12) with equal features."""
    from safetensors.torch import load_file

    import train.probe as P
    from train.config import TrainConfig
    from train.data.synthetic import write_dataset
    from train.loop import pretrain

    src = _timm("atto", 32, 3)
    weights = tmp_path / "model.safetensors"
    save_file(src.state_dict(), str(weights))
    stem = write_dataset(str(tmp_path / "data"), tiles=24, size=64, seed=1, quiet=True, splits=(1.0, 0.0, 0.0))
    run = tmp_path / "run"
    pretrain(TrainConfig(data=stem, out=str(run), batch_size=4, steps=1, lr=1e-9, warmup_steps=0, png_every=0,
                         log_every=1, ckpt_every=1, progress=False, stem="original", init_from=f"timm:{weights}",
                         backend="sparse", impl=SPARSE_IMPL))
    log = capsys.readouterr().err
    assert "encoder from timm weights" in log and "3 input channels -> 12" in log and "4x4 patch -> 1x1" in log
    out = tmp_path / "encoder.safetensors"
    P.main(["--checkpoint", str(run / "last.pt"), "--export", str(out), "--layout", "timm"])
    model = timm.create_model("convnextv2_atto", num_classes=0, patch_size=1, in_chans=12).eval()
    model.load_state_dict(load_file(str(out)), strict=True)
    # the encoder started from the timm weights: one step at lr 1e-9 leaves the deep layers where they were
    w = model.stages[3].blocks[1].mlp.fc2.weight
    torch.testing.assert_close(w, src.stages[3].blocks[1].mlp.fc2.weight, atol=1e-6, rtol=0)
    enc = P.encoder_from_checkpoint(str(run / "last.pt"), 56)
    x = torch.randn(2, 12, 56, 56)
    with torch.no_grad():
        assert _rel(model.forward_features(x), enc(x)) <= 1e-5
