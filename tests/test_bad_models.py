"""Impossible model settings are refused when the model is built, before anything is allocated, naming the
argument: zero or negative sizes, wrong numeric types (bools, floats where ints are meant), a mask ratio that
keeps no patch or leaves pixel-only tasks nothing to predict; numpy scalars are accepted as the numbers they
hold. Inputs in a dtype the weights are not in say which dtypes work; class-weight targets are checked."""

import numpy as np
import pytest
import torch

from mmearth_kernels.models import MPMAE, ConvNeXtV2Encoder
from mmearth_kernels.models import losses as loss_fns
from mmearth_kernels.models.mpmae import check_mask_ratio
from mmearth_kernels.testing import training_batch

SMALL = dict(img_size=16, patch_size=8)

ENCODER = {
    "in_chans 0": (dict(in_chans=0), ValueError, "in_chans must be a positive int, got 0"),
    "in_chans -3": (dict(in_chans=-3), ValueError, "in_chans must be a positive int, got -3"),
    "in_chans 12.0": (dict(in_chans=12.0), TypeError, r"in_chans must be a positive int, got 12.0 \(float\)"),
    "in_chans True": (dict(in_chans=True), TypeError, r"in_chans must be a positive int, got True \(bool\)"),
    "in_chans '12'": (dict(in_chans="12"), TypeError, "in_chans must be a positive int, got '12'"),
    "in_chans numpy bool": (dict(in_chans=np.bool_(True)), TypeError, "in_chans must be a positive int"),
    "img_size 0": (dict(img_size=0), ValueError, "img_size must be a positive multiple of patch_size 8, got 0"),
    "img_size -56": (dict(img_size=-56), ValueError, "img_size must be a positive multiple"),
    "img_size 56.0": (dict(img_size=56.0), TypeError, r"img_size must be .*got 56.0 \(float\)"),
    "img_size 60": (dict(img_size=60), ValueError, "img_size 60 must be a positive multiple of patch_size 8"),
    "img_size numpy float": (dict(img_size=np.float32(56)), TypeError, r"img_size must be .*\(float32\)"),
    "patch_size 0": (dict(patch_size=0), ValueError, "patch_size must be a positive multiple of 8, got 0"),
    "patch_size -8": (dict(patch_size=-8), ValueError, "patch_size must be a positive multiple of 8, got -8"),
    "patch_size 12": (dict(patch_size=12), ValueError, "patch_size must be a positive multiple of 8, got 12"),
    "patch_size True": (dict(patch_size=True), TypeError, "patch_size must be a positive multiple of 8, got True"),
    "patch_size 8.5": (dict(patch_size=8.5), TypeError, "patch_size must be a positive multiple of 8, got 8.5"),
    "size None": (dict(size=None), ValueError, "size must be one of atto, .*got None"),
    "size 3": (dict(size=3), ValueError, "size must be one of atto"),
    "stem None": (dict(stem=None), ValueError, "stem must be one of mmearth, original, got None"),
    "backend ''": (dict(backend=""), ValueError, "backend must be one of .*got ''"),
    "grn_stats 0": (dict(grn_stats=0), ValueError, "grn_stats must be one of per_sample, batch, got 0"),
    "impl gpu": (dict(impl="gpu"), ValueError, "impl must be one of auto, .*got 'gpu'"),
    "depths without dims": (dict(depths=(1, 1, 1, 1)), ValueError, "depths and dims go together"),
    "dims without depths": (dict(dims=(8, 8, 8, 8)), ValueError, "depths and dims go together"),
    "depths of 3 stages": (dict(depths=(1, 1, 1), dims=(8, 8, 8, 8)), ValueError, "depths must be 4 positive ints"),
    "depths a string": (dict(depths="1111", dims=(8, 8, 8, 8)), ValueError, "depths must be 4 positive ints"),
    "depth 0": (dict(depths=(1, 0, 1, 1), dims=(8, 8, 8, 8)), ValueError, r"depths\[1\] must be a positive int, got 0"),
    "depth -1": (dict(depths=(1, 1, 1, -1), dims=(8, 8, 8, 8)), ValueError, r"depths\[3\] must be a positive int"),
    "depth 1.5": (dict(depths=(1, 1.5, 1, 1), dims=(8, 8, 8, 8)), TypeError, r"depths\[1\] must be a positive int"),
    "width 0": (dict(depths=(1, 1, 1, 1), dims=(8, 0, 8, 8)), ValueError, r"dims\[1\] must be a positive int, got 0"),
    "width -8": (dict(depths=(1, 1, 1, 1), dims=(-8, 8, 8, 8)), ValueError, r"dims\[0\] must be a positive int"),
    "width True": (dict(depths=(1, 1, 1, 1), dims=(8, 8, True, 8)), TypeError, r"dims\[2\] must be a positive int"),
}


@pytest.mark.parametrize("name", sorted(ENCODER))
def test_impossible_encoder_settings(name):
    kwargs, exc, match = ENCODER[name]
    with pytest.raises(exc, match=match):
        ConvNeXtV2Encoder(**({"size": "atto"} | kwargs))


MPMAE_CASES = {
    "decoder_dim 0": (dict(decoder_dim=0), ValueError, "decoder_dim must be a positive int"),
    "decoder_dim 16.0": (dict(decoder_dim=16.0), TypeError, r"decoder_dim must be a positive int .*got 16.0"),
    "decoder_dim False": (dict(decoder_dim=False), TypeError, "decoder_dim must be a positive int"),
    "mask_ratio 1.0": (dict(mask_ratio=1.0), ValueError, r"mask_ratio 1.0 keeps no patch of the 2x2 grid"),
    "mask_ratio 0.9 on 2x2": (dict(mask_ratio=0.9), ValueError, r"mask_ratio 0.9 keeps no patch .*at most 0.7500"),
    "mask_ratio 0.99 at 56/8": (dict(mask_ratio=0.99, img_size=56), ValueError, "keeps no patch of the 7x7 grid"),
    "mask_ratio 1.5": (dict(mask_ratio=1.5), ValueError, r"mask_ratio must be a number in \[0.0, 1.0\], got 1.5"),
    "mask_ratio -0.1": (dict(mask_ratio=-0.1), ValueError, r"mask_ratio must be a number in \[0.0, 1.0\]"),
    "mask_ratio nan": (dict(mask_ratio=float("nan")), ValueError, "mask_ratio must be a number .*got nan"),
    "mask_ratio True": (dict(mask_ratio=True), TypeError, r"mask_ratio must be a number .*True \(bool\)"),
    "mask_ratio '0.6'": (dict(mask_ratio="0.6"), TypeError, "mask_ratio must be a number"),
    "mask_ratio 0 with pixel tasks": (dict(mask_ratio=0.0, tasks="pixel"), ValueError,
                                      "mask_ratio 0.0 masks no patch .*objective is empty"),
    "mask_ratio 0 with s2 only": (dict(mask_ratio=0, tasks="s2"), ValueError, "masks no patch .*sentinel2"),
    "norm_pix_loss 1": (dict(norm_pix_loss=1), TypeError, r"norm_pix_loss must be True or False, got 1 \(int\)"),
    "norm_pix_loss 'yes'": (dict(norm_pix_loss="yes"), TypeError, "norm_pix_loss must be True or False"),
    "init xavier": (dict(init="xavier"), ValueError, "init must be one of mmearth, standard, got 'xavier'"),
    "tasks None": (dict(tasks=None), TypeError, "tasks must be a set name, .*got None"),
    "tasks 5": (dict(tasks=5), TypeError, "tasks must be a set name"),
    "tasks empty list": (dict(tasks=[]), ValueError, "no task given"),
    "tasks ','": (dict(tasks=","), ValueError, "no task given"),
    "tasks [1]": (dict(tasks=[1]), ValueError, r"unknown task\(s\) \[1\]"),
    "in_chans 0 (through the encoder)": (dict(in_chans=0), ValueError, "in_chans must be a positive int"),
}


@pytest.mark.parametrize("name", sorted(MPMAE_CASES))
def test_impossible_mpmae_settings(name):
    kwargs, exc, match = MPMAE_CASES[name]
    with pytest.raises(exc, match=match):
        MPMAE("atto", **(SMALL | dict(decoder_dim=16) | kwargs))


def test_numpy_scalars_are_the_numbers_they_hold():
    torch.manual_seed(0)
    a = MPMAE("atto", img_size=np.int64(16), patch_size=np.int32(8), decoder_dim=np.int16(16),
              mask_ratio=np.float32(0.6), norm_pix_loss=np.bool_(True), init="standard", tasks="s2")
    torch.manual_seed(0)
    b = MPMAE("atto", img_size=16, patch_size=8, decoder_dim=16, mask_ratio=0.6, init="standard", tasks="s2")
    assert type(a.patch_size) is int and type(a.encoder.img_size) is int and type(a.mask_ratio) is float
    assert a.norm_pix_loss is True and a.random_mask(2)[1] == b.random_mask(2)[1] == 1
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_valid_edges_are_accepted():
    """A ratio keeping one patch, and nothing masked when image tasks give the objective something."""
    for ratio, tasks in ((0.75, ("sentinel2",)), (0.0, ("era5",)), (0, ("sentinel2", "biome"))):
        check_mask_ratio(ratio, 2, tasks)
    assert MPMAE("atto", **SMALL, decoder_dim=16, mask_ratio=0.75, init="standard").random_mask(1)[1] == 1


@pytest.mark.parametrize("backend", ["dense", "sparse"])
def test_an_input_dtype_the_weights_are_not_in_says_what_works(backend):
    enc = ConvNeXtV2Encoder("atto", **SMALL, backend=backend)
    with pytest.raises(TypeError, match="x is torch.float64 but the encoder's weights are torch.float32: .*float32, "
                                        "float64, float16 or bfloat16.*torch.autocast"):
        enc(torch.randn(1, 12, 16, 16, dtype=torch.float64))
    y = enc.to(torch.float64)(torch.randn(1, 12, 16, 16, dtype=torch.float64))  # what the message says works
    assert y.dtype == torch.float64


# -- biome / eco-region targets as class weights (soft targets) -------------------------------------------
ROWS = {
    "negative weight": (lambda t: t.float() - 1, "target 'biome' rows must be non-negative, finite class weights"),
    "NaN weight": (lambda t: t.float().masked_fill(t == 1, float("nan")), "rows must be non-negative, finite"),
    "inf weight": (lambda t: t.float() * float("inf"), "target 'biome' rows must be non-negative, finite"),
    "complex rows": (lambda t: t.to(torch.complex64), "target 'biome' rows must be real class weights"),
    "rows of 13 classes": (lambda t: t[:, :13], r"target 'biome' must be \[2, 14\]"),
}


@pytest.fixture(scope="module")
def biome_model():
    return MPMAE("atto", **SMALL, decoder_dim=16, tasks="biome,sentinel2", init="standard")


@pytest.mark.parametrize("name", sorted(ROWS))
def test_bad_class_weight_rows(name, biome_model):
    change, match = ROWS[name]
    model = biome_model
    mb = training_batch(2, 16, model.tasks)
    mb["biome"] = change(torch.nn.functional.one_hot(mb["biome"], 14))
    mask, kept = model.random_mask(2, generator=torch.Generator().manual_seed(0))
    with pytest.raises((TypeError, ValueError), match=match):
        model(mb["input"], mb, mask, kept)


def test_soft_targets_equal_hard_labels_for_one_hot_rows_and_spread_over_several():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 14, generator=g, dtype=torch.float64)
    idx = torch.tensor([3, 0, 13, 7, -1])
    rows = torch.nn.functional.one_hot(idx.clamp_min(0), 14).float()
    rows[4] = 0  # unlabelled: ignored in both
    torch.testing.assert_close(loss_fns.class_ce(logits.float(), rows), loss_fns.class_ce(logits.float(), idx))
    two = torch.zeros(1, 14)
    two[0, [2, 5]] = 1  # a row marking two classes: half the target on each
    want = -0.5 * (logits[:1, 2] + logits[:1, 5]).float() + torch.logsumexp(logits[:1].float(), 1)
    torch.testing.assert_close(loss_fns.class_ce(logits[:1].float(), two), want[0])
