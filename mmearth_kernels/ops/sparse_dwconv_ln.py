"""``LayerNorm(sparse_dwconv2d(x))``: a ConvNeXt V2 block's depthwise conv and the LayerNorm after it, as one op.

Fused, a program computes a row tile's conv over all channels, stores it (y1: the LayerNorm backward needs it),
and normalises the tile while it is still in cache; unfused, a separate LayerNorm reads y1 back from memory. One
read of the C-wide tensor and one launch less per block forward (docs/bytes-model.md: the smallest of the
block's fusions). The backward is aten's LayerNorm backward (the strongest one a user has, and what the unfused
pair runs), then the conv's own backward op.

Impls: ``"cpu"`` (C++, ``csrc/cpu/sparse_dwconv.cpp``: each row's LayerNorm right after its conv, in L1) and
``"triton"`` (``triton_kernels/_layernorm.py`` on either tiling) are fused; ``"cuda"`` is the CUDA conv, then
``F.layer_norm``; ``"ref"`` is :func:`mmearth_kernels.reference.sparse_dwconv2d_ln_ref`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reference
from ..layout import SparseLayout
from . import _checks
from .registry import Baseline, BenchSpec, Impl, OpSpec, Sample, register_kernels, register_op, triton_op
from .sparse_dwconv import (CONV_FLOPS, PATCHES_SCHEMA, ROWS_SCHEMA, SPARSE_DWCONV2D, check_args, conv_inputs,
                            conv_samples, needed, patches_args, rows_args, saved_layout)

LN_EPS = 1e-6  # ConvNeXt V2's


def _fake_forward(x, weight, bias, ln_weight, ln_bias, *layout_and_eps):
    torch._check(x.dim() == 2, lambda: "x must be [N, C]")
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    stats = x.new_empty(x.shape[0], dtype=acc)
    return torch.empty_like(x), torch.empty_like(x), stats, torch.empty_like(stats)


def _setup_context(ctx, inputs, output):
    x, weight, bias, ln_weight, ln_bias, *layout, _eps = inputs
    _, y1, mean, rstd = output
    ctx.save_for_backward(x, weight, ln_weight, ln_bias, y1, mean, rstd, *(t for t in layout if torch.is_tensor(t)))
    ctx.layout_args = [None if torch.is_tensor(t) else t for t in layout]  # the ints (pad, block) of the tiled op
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(y1, mean, rstd)
    # No zero gradients for y1, mean, rstd: materialised, they would cost an [N, C] memset and three launches
    # per call, as much as the fusion saves in the forward.
    ctx.set_materialize_grads(False)


def layer_norm_backward(grad, y1, mean, rstd, ln_weight, ln_bias, output_mask):
    """aten's LayerNorm backward from our forward's statistics (in the accumulation dtype). On CUDA aten takes them
    so with bf16/fp16 rows. On CPU it wants them in the rows' dtype (a CPU bf16 LayerNorm keeps a bf16 rstd); rather
    than round them, the CPU backward of low-precision rows runs in fp32 and rounds its results once."""
    C = y1.shape[1]
    if y1.device.type != "cpu" or y1.dtype == mean.dtype:
        return torch.ops.aten.native_layer_norm_backward(grad, y1, [C], mean[:, None], rstd[:, None], ln_weight,
                                                         ln_bias, output_mask)
    up = mean.dtype
    dy1, dlnw, dlnb = torch.ops.aten.native_layer_norm_backward(grad.to(up), y1.to(up), [C], mean[:, None],
                                                                rstd[:, None], ln_weight.to(up), ln_bias.to(up),
                                                                output_mask)
    return tuple(None if g is None else g.to(like.dtype) for g, like in ((dy1, y1), (dlnw, ln_weight), (dlnb, ln_bias)))


def _autograd_for(conv_backward):
    """Autograd of a fused forward op: the LayerNorm backward gives dy1, then ``conv_backward(dy1, x, weight,
    *layout, output_mask)`` (the conv's backward op for that op's layout arguments)."""

    def backward(ctx, grad, *_unused):  # y1, mean, rstd are not differentiable
        x, weight, ln_weight, ln_bias, y1, mean, rstd, *tensors = ctx.saved_tensors
        layout = saved_layout(ctx, tensors)
        if grad is None:  # y unused (not materialised: see _setup_context)
            return (None,) * (5 + len(layout) + 1)
        need = needed(ctx)
        need_ln = [any(need), ctx.needs_input_grad[3], ctx.needs_input_grad[4]]
        dy1, dlnw, dlnb = layer_norm_backward(grad.contiguous(), y1, mean, rstd, ln_weight, ln_bias, need_ln)
        grads = conv_backward(dy1, x, weight, *layout, need) if any(need) else (None,) * 3
        return (*(g if n else None for g, n in zip(grads, need)), dlnw, dlnb, *(None,) * (len(layout) + 1))

    return backward


def _register(forward: str, conv_impl: Impl) -> None:
    """Fake kernel and autograd of a fused forward op whose backward ends in ``conv_impl``'s backward op."""
    register_kernels(forward, conv_impl.backward, fake_forward=_fake_forward, setup_context=_setup_context,
                     autograd_for=_autograd_for)


# (y, y1, mean, rstd): y1 the conv's output (kept for the LayerNorm backward), mean/rstd [N] its per-row statistics
# in the accumulation dtype (as the C++ schema); no backward op of its own
FORWARD = "(Tensor x, Tensor weight, Tensor? bias, Tensor ln_weight, Tensor ln_bias, {}, float eps) -> " \
          "(Tensor, Tensor, Tensor, Tensor)"
triton_op("sparse_dwconv2d_ln_triton", FORWARD.format(ROWS_SCHEMA), "sparse_dwconv", "forward_ln")
triton_op("sparse_dwconv2d_ln_tiled_triton", FORWARD.format(PATCHES_SCHEMA), "sparse_dwconv_tiled", "forward_ln")
_register("sparse_dwconv2d_ln", SPARSE_DWCONV2D.impl("cpu"))
_register("sparse_dwconv2d_ln_triton", SPARSE_DWCONV2D.impl("triton"))
_register("sparse_dwconv2d_ln_tiled_triton", SPARSE_DWCONV2D.impl("triton", "patches"))


def sparse_dwconv2d_ln(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ln_weight: torch.Tensor,
                       ln_bias: torch.Tensor, layout: SparseLayout, *, eps: float = LN_EPS, impl: str = "auto",
                       tiling: str = "rows") -> torch.Tensor:
    """``F.layer_norm(sparse_dwconv2d(x, weight, bias, layout), (C,), ln_weight, ln_bias, eps)`` in one op.

    Args:
        x, weight, bias, layout, impl, tiling: as :func:`mmearth_kernels.sparse_dwconv2d`.
        ln_weight, ln_bias: the LayerNorm's ``[C]`` affine parameters (``nn.LayerNorm(C).weight`` / ``.bias``).
        eps: the LayerNorm's eps (ConvNeXt V2: 1e-6).
    Returns:
        ``[N, C]`` in x's dtype, by every impl (under autocast too: the normalised rows are the next Linear's input,
        which autocast would cast to this dtype anyway; the unfused impls' ``F.layer_norm`` autocasts to float32).
    """
    weight, bias = check_args(x, weight, bias, layout, tiling)
    C = x.shape[1]
    ln_weight, ln_bias = _checks.autocast_params(x, ln_weight, ln_bias)
    for name, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t is None:
            raise ValueError(f"{name} is None: sparse_dwconv2d_ln normalises with an affine LayerNorm (nn.LayerNorm(C, "
                             "elementwise_affine=True)); without one, use sparse_dwconv2d + F.layer_norm")
        _checks.check_tensor(t, name, shape=(C,), like=x)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    y = SPARSE_DWCONV2D_LN.resolve(impl, x.device, tiling)((x, weight, bias, ln_weight, ln_bias), layout, (float(eps),))
    return y if y.dtype == x.dtype else y.to(x.dtype)


def _conv_then_ln(kind: str, tiling: str = "rows"):
    """The unfused impl: the conv's ``kind`` kernel on ``tiling``, then ``F.layer_norm``."""
    conv = SPARSE_DWCONV2D.impl(kind, tiling)

    def run(x, weight, bias, ln_weight, ln_bias, layout, eps):
        return F.layer_norm(conv((x, weight, bias), layout, ()), (x.shape[1],), ln_weight, ln_bias, eps)

    return run


def _samples(device="cpu", dtype=torch.float32, requires_grad=False, cases=None) -> list[Sample]:
    """The conv's samples with LayerNorm parameters. In bf16/fp16 only those with C >= 8: a LayerNorm over 3 or 5
    channels in low precision is ill-conditioned (one ulp of the conv's rounded output moves a normalised value by up
    to 1/std, so which of two correct impls has the larger max error is a coin toss)."""
    out = []
    for s in conv_samples(device, dtype, requires_grad, cases):
        C = s.inputs[0].shape[1]
        if dtype in (torch.float16, torch.bfloat16) and C < 8:
            continue
        g = torch.Generator().manual_seed(C + (s.case.seed if s.case else 0))
        lw = (1 + 0.5 * torch.randn(C, generator=g)).to(device, dtype).requires_grad_(requires_grad)
        lb = torch.randn(C, generator=g).to(device, dtype).requires_grad_(requires_grad)
        out.append(Sample(s.inputs + [lw, lb], s.layout, (LN_EPS,), {"eps": LN_EPS}, s.name, s.case))
    return out


def _inputs(N: int, C: int, gen: torch.Generator):
    inputs, kwargs = conv_inputs(N, C, gen)
    return inputs + [1 + torch.randn(C, generator=gen) / 4, torch.randn(C, generator=gen)], kwargs


def _unfused(tiling: str):
    """This library's conv (on rows: the impl ``auto`` picks; on patches: Triton), then ``F.layer_norm`` on the same
    rows: what the ``sparse`` backend runs."""
    def build(inputs, layout):
        x, w, b, lw, lb = inputs
        kind = SPARSE_DWCONV2D.resolve("auto", x.device).kind if tiling == "rows" else "triton"
        return lambda: F.layer_norm(SPARSE_DWCONV2D.fn(x, w, b, layout, impl=kind, tiling=tiling), (x.shape[1],), lw,
                                    lb, LN_EPS)

    return build


SPARSE_DWCONV2D_LN = register_op(OpSpec(
    name="sparse_dwconv2d_ln", summary="LayerNorm(sparse_dwconv2d(x)): a block's depthwise conv and its LayerNorm",
    fn=sparse_dwconv2d_ln, reference=reference.sparse_dwconv2d_ln_ref,
    impls=(Impl("ref", run=reference.sparse_dwconv2d_ln_ref),
           Impl("ref", "patches", run=reference.sparse_dwconv2d_ln_ref),
           Impl("cpu", forward="sparse_dwconv2d_ln", layout_args=rows_args),
           Impl("cuda", run=_conv_then_ln("cuda"), uses="sparse_dwconv2d"),
           Impl("triton", forward="sparse_dwconv2d_ln_triton", layout_args=rows_args),
           Impl("triton", "patches", forward="sparse_dwconv2d_ln_tiled_triton", layout_args=patches_args)),
    samples=_samples, grad_names=("dx", "dw", "db", "dln_weight", "dln_bias"),
    # forward: read x, write y1 (kept for the LayerNorm backward) and y. Backward: aten's LayerNorm backward (read dy
    # and y1, write dy1; its dgamma/dbeta in the same pass), then the conv's backward (4), run by the conv's own op
    category="sparse dwconv", bytes={"fwd": 3, "bwd": 7}, flops={"fwd": CONV_FLOPS["fwd"]},  # the LayerNorm: 0
    bench=BenchSpec("sparse_dwconv_ln", _inputs, reference_baseline="unfused", modes=("fwd", "fwdbwd"), baselines=(
        Baseline("unfused", _unfused("rows")),
        Baseline("unfused-patches", _unfused("patches"),
                 when=lambda device: SPARSE_DWCONV2D.why_unavailable("triton", device) is None))),
))
