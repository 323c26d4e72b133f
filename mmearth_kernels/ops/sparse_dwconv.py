"""Sparse (submanifold) masked depthwise conv2d on the packed layout.

``y[p] = bias + sum_k w[k] * x[p + o_k]`` over the *active* neighbours of each active row p:
a cross-correlation with zero padding, equal at active sites to ``mask * conv2d(mask * x)``.
The C++ op ``mmearth_kernels::sparse_dwconv2d`` (CPU and CUDA kernels) gets its fake kernel and
autograd here; the backward is the op ``sparse_dwconv2d_backward``.
"""

from __future__ import annotations

import torch

from .. import _extension
from .._constants import MAX_KERNEL_SIZE
from .. import triton_kernels as _triton
from ..layout import SparseLayout, _check_rows
from ..reference import sparse_dwconv2d_ref
from . import _checks, _impl

OP = "sparse_dwconv2d"


def _fake_checks(x, weight):
    torch._check(x.dim() == 2, lambda: "x must be [N, C]")
    torch._check(weight.dim() == 4 and weight.shape[0] == x.shape[1], lambda: "weight must be [C, 1, K, K]")


def _fake_backward(grad_out, x, weight, row_pos, inv_map, output_mask):
    _fake_checks(x, weight)
    need_dx, need_dw, need_db = output_mask
    return (torch.empty_like(x) if need_dx else x.new_empty(0),
            torch.empty_like(weight) if need_dw else weight.new_empty(0),
            weight.new_empty(weight.shape[0] if need_db else 0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, row_pos, inv_map = inputs
    ctx.save_for_backward(x, weight, row_pos, inv_map)
    ctx.has_bias = bias is not None


def _autograd_for(backward_op):
    def backward(ctx, grad):
        x, weight, row_pos, inv_map = ctx.saved_tensors
        # Only the gradients autograd will use are computed (a frozen weight, an input that needs none)
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias]
        # opcheck and autograd may hand us non-contiguous (even zero-stride) gradients.
        grads = backward_op(grad.contiguous(), x, weight, row_pos, inv_map, need)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None, None)

    return backward


if _extension.LOADED:

    @torch.library.register_fake("mmearth_kernels::sparse_dwconv2d")
    def _sparse_dwconv2d_fake(x, weight, bias, row_pos, inv_map):
        _fake_checks(x, weight)
        return torch.empty_like(x)

    torch.library.register_fake("mmearth_kernels::sparse_dwconv2d_backward")(_fake_backward)
    torch.library.register_autograd("mmearth_kernels::sparse_dwconv2d",
                                    _autograd_for(torch.ops.mmearth_kernels.sparse_dwconv2d_backward),
                                    setup_context=_setup_context)

if _triton.HAS_TRITON:
    # custom_op, not triton_op: triton_op fails fake-tensor checks under the interpreter.

    @torch.library.custom_op("mmearth_kernels::sparse_dwconv2d_triton", mutates_args=())
    def sparse_dwconv2d_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               row_pos: torch.Tensor, inv_map: torch.Tensor) -> torch.Tensor:
        from ..triton_kernels import sparse_dwconv as kernels

        return kernels.forward(x, weight, bias, row_pos, inv_map)

    @sparse_dwconv2d_triton.register_fake
    def _sparse_dwconv2d_triton_fake(x, weight, bias, row_pos, inv_map):
        _fake_checks(x, weight)
        return torch.empty_like(x)

    @torch.library.custom_op("mmearth_kernels::sparse_dwconv2d_backward_triton", mutates_args=())
    def sparse_dwconv2d_backward_triton(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                                        row_pos: torch.Tensor, inv_map: torch.Tensor, output_mask: list[bool]
                                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from ..triton_kernels import sparse_dwconv as kernels

        return kernels.backward(grad_out, x, weight, row_pos, inv_map, output_mask)

    sparse_dwconv2d_backward_triton.register_fake(_fake_backward)
    sparse_dwconv2d_triton.register_autograd(_autograd_for(sparse_dwconv2d_backward_triton),
                                             setup_context=_setup_context)


if _triton.HAS_TRITON:
    # The patch-tiled kernels (triton_kernels/sparse_dwconv_tiled.py): same maths, neighbours found through the
    # layout's per-patch table (SparseLayout.patch_table, built once per layout), passed in as tensors.

    @torch.library.custom_op("mmearth_kernels::sparse_dwconv2d_tiled_triton", mutates_args=())
    def sparse_dwconv2d_tiled_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                     row0: torch.Tensor, stride: torch.Tensor, patches: torch.Tensor, pad: int,
                                     block: int) -> torch.Tensor:
        from ..triton_kernels import sparse_dwconv_tiled as kernels

        return kernels.forward(x, weight, bias, row0, stride, patches, pad, block)

    @sparse_dwconv2d_tiled_triton.register_fake
    def _tiled_fake(x, weight, bias, row0, stride, patches, pad, block):
        _fake_checks(x, weight)
        return torch.empty_like(x)

    @torch.library.custom_op("mmearth_kernels::sparse_dwconv2d_tiled_backward_triton", mutates_args=())
    def sparse_dwconv2d_tiled_backward_triton(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                                              row0: torch.Tensor, stride: torch.Tensor, patches: torch.Tensor,
                                              pad: int, block: int, output_mask: list[bool]
                                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from ..triton_kernels import sparse_dwconv_tiled as kernels

        return kernels.backward(grad_out, x, weight, row0, stride, patches, pad, block, output_mask)

    @sparse_dwconv2d_tiled_backward_triton.register_fake
    def _tiled_backward_fake(grad_out, x, weight, row0, stride, patches, pad, block, output_mask):
        return _fake_backward(grad_out, x, weight, None, None, output_mask)

    def _tiled_setup_context(ctx, inputs, output):
        x, weight, bias, row0, stride, patches, pad, block = inputs
        ctx.save_for_backward(x, weight, row0, stride, patches)
        ctx.has_bias, ctx.pad, ctx.block = bias is not None, pad, block

    def _tiled_backward(ctx, grad):
        x, weight, row0, stride, patches = ctx.saved_tensors
        need = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2] and ctx.has_bias]
        grads = sparse_dwconv2d_tiled_backward_triton(grad.contiguous(), x, weight, row0, stride, patches, ctx.pad,
                                                      ctx.block, need)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None,) * 5

    sparse_dwconv2d_tiled_triton.register_autograd(_tiled_backward, setup_context=_tiled_setup_context)

TILINGS = ("rows", "patches")


def check_args(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layout: SparseLayout):
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
    return weight, bias


def resolve(impl: str, tiling: str, layout: SparseLayout, device: torch.device) -> str:
    """The concrete impl for ``impl`` and ``tiling`` (``"patches"`` has a Triton kernel and the reference)."""
    if tiling not in TILINGS:
        raise ValueError(f"tiling must be one of {TILINGS}, got {tiling!r}")
    impl = _impl.resolve(OP, impl, device)
    if tiling == "patches":
        if layout.block is None:
            raise ValueError("tiling='patches' needs a layout made of whole aligned blocks (layout.block set, as "
                             "build_layout makes it); this layout has block=None: use tiling='rows'")
        if impl not in ("ref", "triton"):
            raise ValueError(f"tiling='patches' has a Triton kernel (and the reference), not impl={impl!r}: pass "
                             "impl='triton' (or 'ref'), or use tiling='rows'")
    return impl


def sparse_dwconv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, layout: SparseLayout,
                    impl: str = "auto", tiling: str = "rows") -> torch.Tensor:
    """Depthwise conv over the active sites of ``layout``.

    Args:
        x: ``[N, C]`` packed rows of the layout (float32/64, float16, bfloat16; contiguous).
        weight: ``[C, 1, K, K]``, the ``nn.Conv2d(C, C, K, groups=C)`` layout; K odd (3..15).
        bias: ``[C]`` or None.
        layout: the :class:`SparseLayout` of x's stage.
        impl: ``"auto"``, ``"ref"``, ``"cpu"``, ``"cuda"``, ``"triton"`` (see ``mmearth_kernels.ops._impl``).
        tiling: ``"rows"`` (every impl: blocks of packed rows, neighbours looked up per tap) or ``"patches"``
            (Triton, or the reference: one program per few kept patches, neighbours from a per-patch table;
            needs a layout made of whole blocks, ``layout.block`` set, as :func:`build_layout` makes them).
    Returns:
        ``[N, C]`` in x's dtype.
    """
    weight, bias = check_args(x, weight, bias, layout)
    impl = resolve(impl, tiling, layout, x.device)
    if tiling == "patches" and impl == "triton":
        t = layout.patch_table
        return torch.ops.mmearth_kernels.sparse_dwconv2d_tiled_triton(x, weight, bias, t.row0, t.stride, t.patches,
                                                                      t.pad, layout.block)
    if impl == "ref":
        return sparse_dwconv2d_ref(x, weight, bias, layout)
    if impl == "triton":
        return torch.ops.mmearth_kernels.sparse_dwconv2d_triton(x, weight, bias, layout.row_pos, layout.inv_map)
    return torch.ops.mmearth_kernels.sparse_dwconv2d(x, weight, bias, layout.row_pos, layout.inv_map)
