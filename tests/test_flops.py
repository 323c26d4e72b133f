"""The analytic FLOP count of a training step (mmearth_kernels.models.flops) against torch's own counter
(FlopCounterMode), for the dense and the sparse model, forward and whole step, within 2 %.

torch 2.14's formula for ``convolution_backward`` ignores ``groups`` and counts a depthwise conv's weight gradient
C times too much (the atto demo step reads 117 GFLOP instead of 43); the whole-step comparison gives the counter a
corrected formula (``CONV_BACKWARD``), and a test pins the bug so that we notice when torch fixes it."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from mmearth_kernels.models import MPMAE
from mmearth_kernels.models.flops import step_flops
from mmearth_kernels.testing import training_batch

aten = torch.ops.aten


def _conv_backward(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed, _out_pad,
                   _groups, output_mask, out_shape=None, **kwargs):
    """The input gradient and the weight gradient each cost the forward's multiply-adds (groups included)."""
    fwd = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return fwd * (int(output_mask[0]) + int(output_mask[1]))


CONV_BACKWARD = {aten.convolution_backward: _conv_backward}


def _model(backend, size="atto", **kw):
    torch.manual_seed(0)
    return MPMAE(size, decoder_dim=kw.pop("decoder_dim", 64), backend=backend, **kw)


def _counted(model, batch, mapping=None):
    """(forward, whole step) FLOPs that FlopCounterMode sees, and the kept patches."""
    mb = training_batch(batch, model.encoder.img_size, model.tasks)
    mask, kept = model.random_mask(batch, generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        out = model(mb["input"], mb, mask, kept)
        fwd = counter.get_total_flops()
        out["loss"].backward()
    return fwd, counter.get_total_flops(), kept


CASES = [  # (backend, size, extra model options): dense computes every site, sparse the visible ones
    ("dense", "atto", {}),
    ("sparse", "atto", {}),
    ("sparse", "atto", dict(img_size=112, patch_size=16, stem="original")),
    ("dense", "atto", dict(decoder="per_task", tasks="pixel", mask_ratio=0.75)),
]


@pytest.mark.parametrize("backend, size, kw", CASES, ids=[f"{b}-{s}-{i}" for i, (b, s, _) in enumerate(CASES)])
def test_the_analytic_count_matches_torchs_counter(backend, size, kw):
    model = _model(backend, size, **kw)
    fwd, total, kept = _counted(model, 2, CONV_BACKWARD)
    ours = step_flops(model, 2, kept, all_sites=backend == "dense")
    assert ours.forward == pytest.approx(fwd, rel=0.02)
    assert ours.total == pytest.approx(total, rel=0.02)


def test_sparse_model_flops_are_what_the_dense_backend_would_compute_on_the_visible_sites():
    sparse, dense = _model("sparse"), _model("dense")
    _, kept = sparse.random_mask(1)
    model_flops = step_flops(sparse, 4, kept)
    assert model_flops.total == step_flops(dense, 4, kept).total  # the model FLOPs do not depend on the backend
    executed = step_flops(dense, 4, kept, all_sites=True)
    enc_ratio = executed.part("encoder") / model_flops.part("encoder")
    assert enc_ratio == pytest.approx(49 / kept, rel=1e-9)  # the dense encoder computes all 49 patches
    assert executed.part("decoder") == model_flops.part("decoder")


def test_our_ops_are_counted_not_zero():
    """With the formulas registered from the op table, FlopCounterMode sees the sparse depthwise convs: without
    them the sparse encoder's count would miss every block's 7x7 conv."""
    model = _model("sparse")
    mb = training_batch(2, 56, model.tasks)
    mask, kept = model.random_mask(2, generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        model(mb["input"], mb, mask, kept)
    ours = {str(k): v for k, v in counter.get_flop_counts()["Global"].items() if "mmearth_kernels" in str(k)}
    expected = sum(x.forward for x in step_flops(model, 2, kept).layers if x.name.endswith(".dwconv")
                   and x.name.startswith("encoder.stages"))
    assert sum(ours.values()) == expected, ours


def test_torchs_depthwise_conv_backward_overcount_is_still_there():
    """If this fails, torch fixed the formula (pytorch #183405): CONV_BACKWARD and the notes can go."""
    conv = torch.nn.Conv2d(40, 40, 7, padding=3, groups=40)
    x = torch.randn(2, 40, 14, 14)
    with FlopCounterMode(display=False) as counter:
        conv(x).sum().backward()
    fwd = 2 * 2 * 14 * 14 * 40 * 49
    weight_grad = counter.get_total_flops() - fwd  # x needs no gradient: the backward is the weight gradient only
    assert weight_grad == 40 * fwd
