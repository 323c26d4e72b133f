"""Global Response Normalization (ConvNeXt V2) on rows grouped by sample.

``G = ||x||_2`` over a sample's active rows, ``Nx = G / (mean_c G + eps)``,
``y = gamma * (x * Nx) + beta + x``. ``stats="per_sample"`` (paper / JAX, the default) or
``"batch"`` (one G over all rows of the batch, as the released MinkowskiGRN computes it).
Works on the packed layout ``[N, C]`` and on the dense layout ``[B, ..., C]`` (masked rows zero).
"""

from __future__ import annotations

import torch

from .. import _extension
from ..host_sync import host_only
from .. import triton_kernels as _triton
from ..layout import SparseLayout
from ..reference import grn_ref
from . import _checks, _impl

OP = "grn"
STATS = ("per_sample", "batch")

def _fake_forward(x, gamma, beta, offsets, eps, batch_stats):
    torch._check(x.dim() == 2, lambda: "x must be [N, C]")
    groups = 1 if batch_stats else offsets.shape[0] - 1
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return torch.empty_like(x), x.new_empty((groups, x.shape[1]), dtype=acc)


def _fake_backward(grad_out, x, gamma, gnorm, offsets, eps, batch_stats, output_mask):
    need_dx, need_dgamma, need_dbeta = output_mask
    return (torch.empty_like(x) if need_dx else x.new_empty(0),
            torch.empty_like(gamma) if need_dgamma else gamma.new_empty(0),
            torch.empty_like(gamma) if need_dbeta else gamma.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, gamma, beta, offsets, eps, batch_stats = inputs
    _, gnorm = output
    ctx.mark_non_differentiable(gnorm)  # a statistic for the backward, not a differentiable output
    ctx.save_for_backward(x, gamma, gnorm, offsets)
    ctx.eps, ctx.batch_stats = eps, batch_stats


def _autograd_for(backward_op):
    def backward(ctx, grad_y, _grad_gnorm):
        x, gamma, gnorm, offsets = ctx.saved_tensors
        need = list(ctx.needs_input_grad[:3])  # only what autograd will use (the dx pass is the costly one)
        grads = backward_op(grad_y.contiguous(), x, gamma, gnorm, offsets, ctx.eps, ctx.batch_stats, need)
        return tuple(g if n else None for g, n in zip(grads, need)) + (None, None, None)

    return backward


if _extension.LOADED:
    torch.library.register_fake("mmearth_kernels::grn")(_fake_forward)
    torch.library.register_fake("mmearth_kernels::grn_backward")(_fake_backward)
    torch.library.register_autograd("mmearth_kernels::grn", _autograd_for(torch.ops.mmearth_kernels.grn_backward),
                                    setup_context=_setup_context)

if _triton.HAS_TRITON:
    # custom_op, not triton_op: triton_op fails fake-tensor checks under the interpreter.

    @torch.library.custom_op("mmearth_kernels::grn_triton", mutates_args=())
    def grn_triton(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, offsets: torch.Tensor, eps: float,
                   batch_stats: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from ..triton_kernels import grn as kernels

        return kernels.forward(x, gamma, beta, offsets, eps, batch_stats)

    @torch.library.custom_op("mmearth_kernels::grn_backward_triton", mutates_args=())
    def grn_backward_triton(grad_out: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, gnorm: torch.Tensor,
                            offsets: torch.Tensor, eps: float, batch_stats: bool, output_mask: list[bool]
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from ..triton_kernels import grn as kernels

        return kernels.backward(grad_out, x, gamma, gnorm, offsets, eps, batch_stats, output_mask)

    grn_triton.register_fake(_fake_forward)
    grn_backward_triton.register_fake(_fake_backward)
    grn_triton.register_autograd(_autograd_for(grn_backward_triton), setup_context=_setup_context)


def _offsets_for(x2: torch.Tensor, groups, dense_batch: int | None, rows: int = 0) -> torch.Tensor:
    if dense_batch is not None:  # rows per sample of the dense layout
        return torch.arange(dense_batch + 1, dtype=torch.int32, device=x2.device) * rows
    if isinstance(groups, SparseLayout):
        if groups.num_rows != x2.shape[0]:
            raise ValueError(f"x has {x2.shape[0]} rows but the layout has {groups.num_rows} active sites "
                             f"(is the layout from another stage?)")
        return groups.offsets
    if not isinstance(groups, torch.Tensor):
        raise TypeError("layout must be a SparseLayout or its [B + 1] int32 row offsets for packed [N, C] input, got "
                        f"{type(groups).__name__}")
    if groups.dtype != torch.int32 or groups.dim() != 1 or groups.shape[0] < 1:
        raise ValueError(f"layout given as offsets must be a 1-D int32 tensor of B + 1 >= 1 row offsets, got "
                         f"{tuple(groups.shape)} {groups.dtype}")
    if groups.device != x2.device:
        raise ValueError(f"layout offsets are on {groups.device} but x is on {x2.device}")
    if groups.device.type == "cpu" and not torch.compiler.is_compiling():  # every impl, the reference too
        with host_only("offsets check: CPU tensors only"):
            off = groups.long()
            if int(off[0]) != 0 or int(off[-1]) != x2.shape[0] or bool((off[1:] < off[:-1]).any()):
                raise ValueError(f"layout offsets must start at 0, end at N = {x2.shape[0]} (x's rows) and never "
                                 f"decrease, got {off.tolist()[:8]}{'...' if off.numel() > 8 else ''}")
    return groups


def grn(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
        layout: SparseLayout | torch.Tensor | None = None, *, eps: float = 1e-6, stats: str = "per_sample",
        impl: str = "auto") -> torch.Tensor:
    """GRN on packed rows or on the dense layout.

    Args:
        x: packed ``[N, C]`` rows (then ``layout`` is required), or dense ``[B, L, C]`` /
            ``[B, H, W, C]`` where masked sites hold zeros (then ``layout`` must be None).
        gamma, beta: ``C`` values in any shape (``[C]`` or upstream's ``[1, 1, 1, C]``).
        layout: the :class:`SparseLayout` of packed input, or just its ``[B + 1]`` int32 row offsets
            (``layout.offsets``: all GRN needs to know is where each sample's rows start).
        eps: added to the channel mean of G.
        stats: ``"per_sample"`` or ``"batch"``.
        impl: ``"auto"``, ``"ref"``, ``"cpu"``, ``"cuda"``, ``"triton"``.
    """
    _checks.check_tensor(x, "x")
    if stats not in STATS:
        raise ValueError(f"stats must be one of {STATS}, got {stats!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if x.dim() == 2:
        if layout is None:
            raise ValueError("packed [N, C] input needs a layout (a SparseLayout or its [B + 1] int32 offsets); "
                             "for the dense layout pass x as [B, L, C] or [B, H, W, C]")
        x2, dense_batch = x, None
    elif x.dim() in (3, 4):
        if layout is not None:
            raise ValueError(f"dense input {tuple(x.shape)} takes no layout (one group per sample)")
        rows = 1
        for d in x.shape[1:-1]:
            rows *= d
        x2, dense_batch = x.reshape(x.shape[0] * rows, x.shape[-1]), x.shape[0]  # explicit: B may be 0
    else:
        raise ValueError(f"x must be [N, C] (packed), [B, L, C] or [B, H, W, C] (dense), got {tuple(x.shape)}")
    C = x.shape[-1]
    gamma, beta = _checks.autocast_params(x, gamma, beta)
    for name, t in (("gamma", gamma), ("beta", beta)):
        _checks.check_tensor(t, name, like=x)
        if t.numel() != C:
            raise ValueError(f"{name} must hold C = {C} values (x's last dim), got shape {tuple(t.shape)}")
    off = _offsets_for(x2, layout, dense_batch, rows if dense_batch is not None else 0)
    impl = _impl.resolve(OP, impl, x.device)
    if off.shape[0] < 2:  # an empty batch: no sample, nothing to normalise; the reference handles it
        impl = "ref"
    g, b = gamma.reshape(C), beta.reshape(C)
    batch_stats = stats == "batch"
    if impl == "ref":
        y = grn_ref(x2, g, b, off, eps, batch_stats)
    elif impl == "triton":
        y, _ = torch.ops.mmearth_kernels.grn_triton(x2, g, b, off, float(eps), batch_stats)
    else:
        y, _ = torch.ops.mmearth_kernels.grn(x2, g, b, off, float(eps), batch_stats)
    return y.view(x.shape)
