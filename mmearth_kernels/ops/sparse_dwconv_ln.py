"""``LayerNorm(sparse_dwconv2d(x))``: a ConvNeXt V2 block's depthwise conv and the LayerNorm after it, as one op.

Fused, a program computes a row tile's conv over all channels, stores it (y1: the LayerNorm backward needs it),
and normalises the tile while it is still in cache; unfused, a separate LayerNorm reads y1 back from memory. One
read of the C-wide tensor and one launch less per block forward (docs/bytes-model.md: the smallest of the
block's fusions). The backward is aten's LayerNorm backward (the strongest one a user has, and what the unfused
pair runs), then the conv's own backward.

Impls: ``"cpu"`` (C++, ``csrc/cpu/sparse_dwconv.cpp``: each row's LayerNorm right after its conv, in L1) and
``"triton"`` (``triton_kernels/_layernorm.py`` on either tiling) are fused; ``"cuda"`` is the CUDA conv, then
``F.layer_norm``; ``"ref"`` is :func:`mmearth_kernels.reference.sparse_dwconv2d_ln_ref`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _extension
from .. import triton_kernels as _triton
from ..layout import SparseLayout
from ..reference import sparse_dwconv2d_ln_ref
from . import _checks
from .sparse_dwconv import check_args, resolve, sparse_dwconv2d

OP = "sparse_dwconv2d_ln"  # its CUDA impl is the conv kernel + F.layer_norm: availability follows the conv's


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
        it = iter(tensors)
        layout = [next(it) if a is None else a for a in ctx.layout_args]
        if grad is None:  # y unused (not materialised: see _setup_context)
            return (None,) * (5 + len(layout) + 1)
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias]
        need_ln = [any(need), ctx.needs_input_grad[3], ctx.needs_input_grad[4]]
        dy1, dlnw, dlnb = layer_norm_backward(grad.contiguous(), y1, mean, rstd, ln_weight, ln_bias, need_ln)
        grads = conv_backward(dy1, x, weight, *layout, need) if any(need) else (None,) * 3
        return (*(g if n else None for g, n in zip(grads, need)), dlnw, dlnb, *(None,) * (len(layout) + 1))

    return backward


if _extension.LOADED and _extension.has_kernel(OP, "CPU"):
    torch.library.register_fake("mmearth_kernels::sparse_dwconv2d_ln")(_fake_forward)
    torch.library.register_autograd("mmearth_kernels::sparse_dwconv2d_ln",
                                    _autograd_for(torch.ops.mmearth_kernels.sparse_dwconv2d_backward),
                                    setup_context=_setup_context)

if _triton.HAS_TRITON:
    from . import sparse_dwconv as _conv_ops  # the Triton conv backward ops registered there

    @torch.library.custom_op("mmearth_kernels::sparse_dwconv2d_ln_triton", mutates_args=())
    def sparse_dwconv2d_ln_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                  ln_weight: torch.Tensor, ln_bias: torch.Tensor, row_pos: torch.Tensor,
                                  inv_map: torch.Tensor, eps: float
                                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from ..triton_kernels import sparse_dwconv as kernels

        return kernels.forward_ln(x, weight, bias, ln_weight, ln_bias, row_pos, inv_map, eps)

    @torch.library.custom_op("mmearth_kernels::sparse_dwconv2d_ln_tiled_triton", mutates_args=())
    def sparse_dwconv2d_ln_tiled_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                        ln_weight: torch.Tensor, ln_bias: torch.Tensor, row0: torch.Tensor,
                                        stride: torch.Tensor, patches: torch.Tensor, pad: int, block: int, eps: float
                                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        from ..triton_kernels import sparse_dwconv_tiled as kernels

        return kernels.forward_ln(x, weight, bias, ln_weight, ln_bias, row0, stride, patches, pad, block, eps)

    for _op, _bwd in ((sparse_dwconv2d_ln_triton, _conv_ops.sparse_dwconv2d_backward_triton),
                      (sparse_dwconv2d_ln_tiled_triton, _conv_ops.sparse_dwconv2d_tiled_backward_triton)):
        _op.register_fake(_fake_forward)
        _op.register_autograd(_autograd_for(_bwd), setup_context=_setup_context)


def sparse_dwconv2d_ln(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ln_weight: torch.Tensor,
                       ln_bias: torch.Tensor, layout: SparseLayout, *, eps: float = 1e-6, impl: str = "auto",
                       tiling: str = "rows") -> torch.Tensor:
    """``F.layer_norm(sparse_dwconv2d(x, weight, bias, layout), (C,), ln_weight, ln_bias, eps)`` in one op.

    Args:
        x, weight, bias, layout, impl, tiling: as :func:`mmearth_kernels.sparse_dwconv2d`.
        ln_weight, ln_bias: the LayerNorm's ``[C]`` affine parameters (``nn.LayerNorm(C).weight`` / ``.bias``).
        eps: the LayerNorm's eps (ConvNeXt V2: 1e-6).
    Returns:
        ``[N, C]`` in x's dtype (under autocast too: the normalised rows are the next Linear's input, which
        autocast would cast to this dtype anyway).
    """
    weight, bias = check_args(x, weight, bias, layout)
    C = x.shape[1]
    ln_weight, ln_bias = _checks.autocast_params(x, ln_weight, ln_bias)
    for name, t in (("ln_weight", ln_weight), ("ln_bias", ln_bias)):
        if t is None:
            raise ValueError(f"{name} is None: sparse_dwconv2d_ln normalises with an affine LayerNorm (nn.LayerNorm(C, "
                             "elementwise_affine=True)); without one, use sparse_dwconv2d + F.layer_norm")
        _checks.check_tensor(t, name, shape=(C,), like=x)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    impl = resolve(impl, tiling, layout, x.device)
    if impl == "ref":
        return sparse_dwconv2d_ln_ref(x, weight, bias, ln_weight, ln_bias, layout, eps)
    if impl == "triton":
        if tiling == "patches":
            t = layout.patch_table
            return torch.ops.mmearth_kernels.sparse_dwconv2d_ln_tiled_triton(
                x, weight, bias, ln_weight, ln_bias, t.row0, t.stride, t.patches, t.pad, layout.block, float(eps))[0]
        return torch.ops.mmearth_kernels.sparse_dwconv2d_ln_triton(x, weight, bias, ln_weight, ln_bias,
                                                                   layout.row_pos, layout.inv_map, float(eps))[0]
    if impl == "cpu" and _extension.has_kernel(OP, "CPU"):
        return torch.ops.mmearth_kernels.sparse_dwconv2d_ln(x, weight, bias, ln_weight, ln_bias, layout.row_pos,
                                                            layout.inv_map, float(eps))[0]
    y = sparse_dwconv2d(x, weight, bias, layout, impl=impl, tiling=tiling)
    return F.layer_norm(y, (C,), ln_weight, ln_bias, eps)
