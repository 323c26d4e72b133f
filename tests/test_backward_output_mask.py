"""The backward ops compute only the gradients asked for (``output_mask``, as aten::convolution_backward).

Each asked-for gradient equals the one the full backward returns; the others come back as empty
tensors (never unfilled memory of the full shape); opcheck passes for every mask, so the fake kernels
agree with the real ones under torch.compile.
"""

import itertools

import pytest
import torch

from mmearth_kernels.testing import MASK_CASES, dwconv_samples, grn_samples

from conftest import device_impls, requires_ext

OP = torch.ops.mmearth_kernels
MASKS = [list(m) for m in itertools.product([True, False], repeat=3) if any(m)]
MASK_IDS = ["".join("dwb"[i] if on else "-" for i, on in enumerate(m)) for m in MASKS]
FULL = [True, True, True]
# A sample with every site kept, one with a wholly masked sample, and an empty batch
CASES = [MASK_CASES[0], MASK_CASES[3], MASK_CASES[-1]]


def _ops(impl, name):
    return getattr(OP, f"{name}_triton" if impl == "triton" else name)


def _check(got, full, mask, what):
    for i, (g, f, on) in enumerate(zip(got, full, mask)):
        if on:
            # dx alone may take another summation order (the CPU forward gather with a flipped kernel)
            torch.testing.assert_close(g, f, rtol=1e-6, atol=1e-6, msg=lambda m: f"{what} output {i}: {m}")
        else:
            assert g.numel() == 0, f"{what}: output {i} was not asked for but has shape {tuple(g.shape)}"


@requires_ext
@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("device, impl", device_impls("sparse_dwconv2d"))
def test_sparse_dwconv2d_backward_computes_what_is_asked(device, impl, mask):
    bwd = _ops(impl, "sparse_dwconv2d_backward")
    for s in dwconv_samples(device, torch.float32, cases=CASES):
        args = (torch.randn_like(s.x), s.x, s.weight, s.layout.row_pos, s.layout.inv_map)
        _check(bwd(*args, mask), bwd(*args, FULL), mask, s.name)
        torch.library.opcheck(bwd.default if hasattr(bwd, "default") else bwd, (*args, mask))


@requires_ext
@pytest.mark.parametrize("mask", MASKS, ids=MASK_IDS)
@pytest.mark.parametrize("device, impl", device_impls("grn"))
def test_grn_backward_computes_what_is_asked(device, impl, mask):
    fwd, bwd = _ops(impl, "grn"), _ops(impl, "grn_backward")
    for s in grn_samples(device, torch.float32, cases=CASES):
        for batch_stats in (False, True):
            _, gnorm = fwd(s.x, s.gamma, s.beta, s.layout.offsets, 1e-6, batch_stats)
            args = (torch.randn_like(s.x), s.x, s.gamma, gnorm, s.layout.offsets, 1e-6, batch_stats)
            _check(bwd(*args, mask), bwd(*args, FULL), mask, f"{s.name}, batch_stats={batch_stats}")
            torch.library.opcheck(bwd.default if hasattr(bwd, "default") else bwd, (*args, mask))


class _Ctx:
    def __init__(self, saved, needs, **attrs):
        self.saved_tensors, self.needs_input_grad = saved, needs
        self.__dict__.update(attrs)


@pytest.mark.parametrize("needs, has_bias, asked", [
    ((True, False, True, False, False), False, [True, False, False]),   # frozen weight; no bias in the forward
    ((False, True, True, False, False), True, [False, True, True]),     # input needs no gradient
    ((True, True, True, False, False), True, [True, True, True]),
], ids=["frozen-weight-no-bias", "input-needs-none", "all"])
def test_dwconv_autograd_asks_only_for_what_autograd_needs(needs, has_bias, asked):
    from mmearth_kernels.ops.sparse_dwconv import _autograd_for

    seen = []

    def backward_op(g, x, w, rp, im, mask):
        seen.append(list(mask))
        return tuple(t if on else t.new_empty(0) for t, on in zip((x, w, w[:, 0, 0, 0]), mask))

    x, w = torch.randn(5, 3), torch.randn(3, 1, 3, 3)
    out = _autograd_for(backward_op)(_Ctx((x, w, None, None), needs, has_bias=has_bias), torch.randn(5, 3))
    assert seen == [asked]
    assert [o is not None for o in out[:3]] == asked and out[3:] == (None, None)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)],
                         ids=["x", "gamma", "beta"])
def test_grn_autograd_asks_only_for_what_autograd_needs(needs):
    from mmearth_kernels.ops.grn import _autograd_for

    seen = []

    def backward_op(g, x, gamma, gnorm, offsets, eps, batch_stats, mask):
        seen.append(list(mask))
        return tuple(t if on else t.new_empty(0) for t, on in zip((x, gamma, gamma), mask))

    x, gamma = torch.randn(5, 3), torch.randn(3)
    ctx = _Ctx((x, gamma, None, None), needs + (False, False, False), eps=1e-6, batch_stats=False)
    out = _autograd_for(backward_op)(ctx, torch.randn(5, 3), None)
    assert seen == [list(needs)]
    assert [o is not None for o in out[:3]] == list(needs) and out[3:] == (None, None, None)
