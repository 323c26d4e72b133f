"""The autograd functions ask the backward ops for only the gradients autograd will use (``needs_input_grad`` ->
``output_mask``). That the backward ops then compute exactly those (the others empty) is checked for every backward
op of the op table by tests/test_op_conformance.py."""

import pytest
import torch


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
    ctx = _Ctx((x, w, None, None), needs, has_bias=has_bias, layout_args=[None, None])
    out = _autograd_for(backward_op)(ctx, torch.randn(5, 3))
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
