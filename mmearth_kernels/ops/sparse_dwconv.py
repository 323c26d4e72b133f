"""Sparse (submanifold) masked depthwise conv2d on the packed layout.

``y[p] = bias + sum_k w[k] * x[p + o_k]`` over the *active* neighbours of each active row p:
a cross-correlation with zero padding, equal at active sites to ``mask * conv2d(mask * x)``.
The C++ op ``mmearth_kernels::sparse_dwconv2d`` (CPU and CUDA kernels) gets its fake kernel and
autograd here; the backward is the op ``sparse_dwconv2d_backward``. Two tilings: ``"rows"`` (every impl: blocks
of packed rows, neighbours looked up per tap) and ``"patches"`` (Triton: one program per few kept patches,
neighbours from the layout's per-patch table, ``SparseLayout.patch_table``, built once per layout).

The fake kernels, autograd, layout arguments and checks here also serve the fused conv + LayerNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reference, testing
from .._constants import MAX_KERNEL_SIZE
from ..layout import SparseLayout, _check_rows, to_dense
from . import _checks
from .registry import Baseline, BenchSpec, Impl, OpSpec, Sample, register_kernels, register_op, triton_op


def rows_args(layout: SparseLayout) -> tuple:
    """The layout arguments of the row-tiled ops: each row's position and the inverse map."""
    return layout.row_pos, layout.inv_map


def patches_args(layout: SparseLayout) -> tuple:
    """The layout arguments of the patch-tiled ops: the layout's per-patch table and its block."""
    t = layout.patch_table
    return t.row0, t.stride, t.patches, t.pad, layout.block


def fake_forward(x, weight, *_):
    torch._check(x.dim() == 2, lambda: "x must be [N, C]")
    torch._check(weight.dim() == 4 and weight.shape[0] == x.shape[1], lambda: "weight must be [C, 1, K, K]")
    return torch.empty_like(x)


def _fake_backward(grad_out, x, weight, *layout_and_mask):
    fake_forward(x, weight)
    need_dx, need_dw, need_db = layout_and_mask[-1]
    return (torch.empty_like(x) if need_dx else x.new_empty(0),
            torch.empty_like(weight) if need_dw else weight.new_empty(0),
            weight.new_empty(weight.shape[0] if need_db else 0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, *layout = inputs
    ctx.save_for_backward(x, weight, *(t for t in layout if torch.is_tensor(t)))
    ctx.layout_args = [None if torch.is_tensor(t) else t for t in layout]  # the ints (pad, block) of the tiled op
    ctx.has_bias = bias is not None


def saved_layout(ctx, tensors) -> list:
    """The layout arguments saved by a setup_context: its tensors in order, its ints in their places."""
    it = iter(tensors)
    return [next(it) if a is None else a for a in ctx.layout_args]


def needed(ctx) -> list[bool]:
    """The conv's output_mask: only the gradients autograd will use (a frozen weight, an input that needs none)."""
    return [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias]


def _autograd_for(backward_op):
    def backward(ctx, grad):
        x, weight, *tensors = ctx.saved_tensors
        layout = saved_layout(ctx, tensors)
        need = needed(ctx)
        # opcheck and autograd may hand us non-contiguous (even zero-stride) gradients.
        grads = backward_op(grad.contiguous(), x, weight, *layout, need)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None,) * len(layout)

    return backward


def register_pair(forward: str, backward: str) -> None:
    """Fake kernels and autograd of a conv op pair (a C++ schema or a Triton ``custom_op``; forward ``(x, weight, bias,
    *layout_args) -> y``, backward ``(grad_out, x, weight, *layout_args, output_mask) -> (dx, dw, db)``)."""
    register_kernels(forward, backward, fake_forward=fake_forward, fake_backward=_fake_backward,
                     setup_context=_setup_context, autograd_for=_autograd_for)


# The layout arguments of each tiling in the op schemas: rows (as the C++ schemas), and the per-patch table of the
# patch-tiled Triton kernels (triton_kernels/sparse_dwconv_tiled.py: the same maths, neighbours found through the
# layout's per-patch table, passed in as tensors)
ROWS_SCHEMA = "Tensor row_pos, Tensor inv_map"
PATCHES_SCHEMA = "Tensor row0, Tensor stride, Tensor patches, int pad, int block"
BACKWARD = "(Tensor grad_out, Tensor x, Tensor weight, {}, bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
triton_op("sparse_dwconv2d_triton", f"(Tensor x, Tensor weight, Tensor? bias, {ROWS_SCHEMA}) -> Tensor",
          "sparse_dwconv", "forward")
triton_op("sparse_dwconv2d_backward_triton", BACKWARD.format(ROWS_SCHEMA), "sparse_dwconv", "backward")
triton_op("sparse_dwconv2d_tiled_triton", f"(Tensor x, Tensor weight, Tensor? bias, {PATCHES_SCHEMA}) -> Tensor",
          "sparse_dwconv_tiled", "forward")
triton_op("sparse_dwconv2d_tiled_backward_triton", BACKWARD.format(PATCHES_SCHEMA), "sparse_dwconv_tiled", "backward")
register_pair("sparse_dwconv2d", "sparse_dwconv2d_backward")
register_pair("sparse_dwconv2d_triton", "sparse_dwconv2d_backward_triton")
register_pair("sparse_dwconv2d_tiled_triton", "sparse_dwconv2d_tiled_backward_triton")


def check_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layout: SparseLayout,
               tiling: str = "rows"):
    """The checks of :func:`sparse_dwconv2d` (also :func:`sparse_dwconv2d_ln`'s); returns ``(weight, bias)`` cast
    to x's dtype under autocast."""
    _checks.check_tensor(x, "x", dim=2)
    _check_rows(x, layout)
    C = x.shape[1]
    weight, bias = _checks.autocast_params(x, weight, bias)
    _checks.check_tensor(weight, "weight", dim=4, like=x)
    if weight.shape[0] != C or weight.shape[1] != 1:
        raise ValueError(f"weight must have shape [C, 1, K, K] with C = {C} (x's channels), got {tuple(weight.shape)}")
    K = weight.shape[2]
    if weight.shape[3] != K:
        raise ValueError(f"weight must be square [C, 1, K, K], got {tuple(weight.shape)}")
    if K % 2 == 0 or K > MAX_KERNEL_SIZE:
        raise ValueError(f"kernel size must be odd and at most {MAX_KERNEL_SIZE} (a centred 'same' conv), got {K}")
    if bias is not None:
        _checks.check_tensor(bias, "bias", shape=(C,), like=x)
    if tiling == "patches" and layout.block is None:
        raise ValueError("tiling='patches' needs a layout made of whole aligned blocks (layout.block set, as "
                         "build_layout makes it); this layout has block=None: use tiling='rows'")
    return weight, bias


def sparse_dwconv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layout: SparseLayout,
                    impl: str = "auto", tiling: str = "rows") -> torch.Tensor:
    """Depthwise conv over the active sites of ``layout``.

    Args:
        x: ``[N, C]`` packed rows of the layout (float32/64, float16, bfloat16; contiguous).
        weight: ``[C, 1, K, K]``, the ``nn.Conv2d(C, C, K, groups=C)`` layout; K odd (3..15).
        bias: ``[C]`` or None.
        layout: the :class:`SparseLayout` of x's stage.
        impl: one of ``mmearth_kernels.IMPLS`` (``python -m mmearth_kernels.info`` lists those available here).
        tiling: ``"rows"`` (every impl) or ``"patches"`` (Triton, or the reference; needs a layout made of whole
            blocks, ``layout.block`` set, as :func:`build_layout` makes them).
    Returns:
        ``[N, C]`` in x's dtype.
    """
    weight, bias = check_args(x, weight, bias, layout, tiling)
    return SPARSE_DWCONV2D.resolve(impl, x.device, tiling)((x, weight, bias), layout, ())


def conv_samples(device="cpu", dtype=torch.float32, requires_grad=False, cases=None) -> list[Sample]:
    return [Sample([s.x, s.weight, s.bias], s.layout, (), {}, s.name, s.case)
            for s in testing.dwconv_samples(device, dtype, requires_grad, cases)]


def conv_inputs(N: int, C: int, gen: torch.Generator):
    """Benchmark rows ``[N, C]`` and a 7x7 depthwise conv."""
    return [torch.randn(N, C, generator=gen), torch.randn(C, 1, 7, 7, generator=gen) / 7,
            torch.randn(C, generator=gen)], {}


def _dense_masked(inputs, layout):
    """What users have today: channels_last ``conv2d(groups=C)`` with the mask applied before and after."""
    x, w, b = inputs
    xin = to_dense(x.detach(), layout).contiguous(memory_format=torch.channels_last).requires_grad_()
    m = layout.active()[:, None].to(x.dtype).contiguous(memory_format=torch.channels_last)
    return lambda: F.conv2d(xin * m, w, b, padding=w.shape[-1] // 2, groups=w.shape[0]) * m


def conv_flops(x, weight, *args, out_shape=None, **kwargs) -> int:
    """2 x N x C x K x K: a multiply-add per tap (x ``[N, C]``, weight ``[C, 1, K, K]``), as FlopCounterMode counts a
    convolution (taps at inactive neighbours included: the work a dense conv of the active rows would do)."""
    return 2 * x[0] * x[1] * weight[-2] * weight[-1]


def _conv_backward_flops(grad_out, x, weight, *layout_and_mask, out_shape=None, **kwargs) -> int:
    """A conv's forward FLOPs for dx and again for dweight, each if asked for (the bias gradient: a reduction, 0)."""
    need_dx, need_dw, _ = layout_and_mask[-1]
    return (int(need_dx) + int(need_dw)) * conv_flops(x, weight)


def conv_backward_inputs(inputs, outputs):
    """(x, weight): what the conv backward ops take between the gradient and the layout arguments."""
    return inputs[0], inputs[1]


CONV_FLOPS = {"fwd": conv_flops, "bwd": _conv_backward_flops}

SPARSE_DWCONV2D = register_op(OpSpec(
    name="sparse_dwconv2d", summary="submanifold depthwise conv2d over the active rows of a packed layout",
    fn=sparse_dwconv2d, reference=reference.sparse_dwconv2d_ref,
    impls=(Impl("ref", run=reference.sparse_dwconv2d_ref),
           Impl("ref", "patches", run=reference.sparse_dwconv2d_ref),  # the same maths: accepts the tiling
           Impl("cpu", forward="sparse_dwconv2d", backward="sparse_dwconv2d_backward", layout_args=rows_args),
           Impl("cuda", forward="sparse_dwconv2d", backward="sparse_dwconv2d_backward", layout_args=rows_args),
           Impl("triton", forward="sparse_dwconv2d_triton", backward="sparse_dwconv2d_backward_triton",
                layout_args=rows_args),
           Impl("triton", "patches", forward="sparse_dwconv2d_tiled_triton",
                backward="sparse_dwconv2d_tiled_backward_triton", layout_args=patches_args)),
    samples=conv_samples, grad_names=("dx", "dw", "db"), backward_inputs=conv_backward_inputs,
    # forward: read x, write y; backward: dx reads dy and writes dx, dw reads dy and x (benchmarks/bytes_model.py)
    category="sparse dwconv", bytes={"fwd": 2, "bwd": 4}, flops=CONV_FLOPS,
    bench=BenchSpec("sparse_dwconv", conv_inputs, time_ref=True, reference_baseline="dense",
                    baselines=(Baseline("dense", _dense_masked),)),
))
