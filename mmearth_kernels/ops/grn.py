"""Global Response Normalization (ConvNeXt V2) on rows grouped by sample.

``G = ||x||_2`` over a sample's active rows, ``Nx = G / (mean_c G + eps)``,
``y = gamma * (x * Nx) + beta + x``. ``stats="per_sample"`` (paper / JAX, the default) or
``"batch"`` (one G over all rows of the batch, as the released MinkowskiGRN computes it).
Works on the packed layout ``[N, C]`` and on the dense layout ``[B, ..., C]`` (masked rows zero).

The fake kernels, autograd and argument checks here serve every op of the GRN family (``gelu_grn`` too).
"""

from __future__ import annotations

import functools

import torch

from .. import reference, testing
from ..host_sync import host_only
from ..layout import SparseLayout, to_dense
from . import _checks
from .registry import Baseline, BenchSpec, Impl, OpSpec, Sample, register_kernels, register_op, triton_op

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


# The GRN family's op signatures: forward -> (y, gnorm [groups, C] in the accumulation dtype); backward -> (dx,
# dgamma, dbeta), computing only those output_mask asks for (as the C++ schemas in csrc/mmearth_kernels.cpp)
FORWARD_SCHEMA = ("(Tensor x, Tensor gamma, Tensor beta, Tensor offsets, float eps, bool batch_stats) "
                  "-> (Tensor, Tensor)")
BACKWARD_SCHEMA = ("(Tensor grad_out, Tensor x, Tensor gamma, Tensor gnorm, Tensor offsets, float eps, "
                   "bool batch_stats, bool[3] output_mask) -> (Tensor, Tensor, Tensor)")


def register_family(forward: str, backward: str) -> None:
    """Fake kernels and autograd of a GRN-family op pair (a C++ schema or a Triton ``custom_op``)."""
    register_kernels(forward, backward, fake_forward=_fake_forward, fake_backward=_fake_backward,
                     setup_context=_setup_context, autograd_for=_autograd_for)


triton_op("grn_triton", FORWARD_SCHEMA, "grn", "forward")
triton_op("grn_backward_triton", BACKWARD_SCHEMA, "grn", "backward")
register_family("grn", "grn_backward")
register_family("grn_triton", "grn_backward_triton")


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


def check_family_args(name: str, x: torch.Tensor, gamma, beta, eps: float, stats: str):
    """The checks every GRN-family op shares; returns ``(gamma, beta)`` as ``[C]``, cast to x's dtype under
    autocast."""
    if stats not in STATS:
        raise ValueError(f"stats must be one of {STATS}, got {stats!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    C = x.shape[-1]
    gamma, beta = _checks.autocast_params(x, gamma, beta)
    for what, t in (("gamma", gamma), ("beta", beta)):
        _checks.check_tensor(t, what, like=x)
        if t.numel() != C:
            raise ValueError(f"{what} must hold C = {C} values ({name}'s last dim), got shape {tuple(t.shape)}")
    return gamma.reshape(C), beta.reshape(C)


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
        impl: one of ``mmearth_kernels.IMPLS`` (``python -m mmearth_kernels.info`` lists those available here).
    """
    _checks.check_tensor(x, "x")
    if x.dim() == 2:
        if layout is None:
            raise ValueError("packed [N, C] input needs a layout (a SparseLayout or its [B + 1] int32 offsets); "
                             "for the dense layout pass x as [B, L, C] or [B, H, W, C]")
        x2, off = x, _offsets_for(x, layout, None)
    elif x.dim() in (3, 4):
        if layout is not None:
            raise ValueError(f"dense input {tuple(x.shape)} takes no layout (one group per sample)")
        rows = 1
        for d in x.shape[1:-1]:
            rows *= d
        x2 = x.reshape(x.shape[0] * rows, x.shape[-1])  # explicit: B may be 0
        off = _offsets_for(x2, None, x.shape[0], rows)
    else:
        raise ValueError(f"x must be [N, C] (packed), [B, L, C] or [B, H, W, C] (dense), got {tuple(x.shape)}")
    g, b = check_family_args("x", x, gamma, beta, eps, stats)
    run = GRN.resolve(impl, x.device)
    if off.shape[0] < 2:  # an empty batch: no sample, nothing to normalise; the reference handles it
        run = GRN.impl("ref")
    return run((x2, g, b), off, (float(eps), stats == "batch")).view(x.shape)


def family_samples(device="cpu", dtype=torch.float32, requires_grad=False, cases=None) -> list[Sample]:
    """testing.grn_samples with the statistic mode alternating between a case's two samples (both modes on every
    mask case)."""
    out = []
    for j, s in enumerate(testing.grn_samples(device, dtype, requires_grad, cases)):
        stats = STATS[(s.case.seed + j) % 2]
        out.append(Sample([s.x, s.gamma, s.beta], s.layout, (1e-6, stats == "batch"), {"eps": 1e-6, "stats": stats},
                          f"{s.name}-{stats}", s.case))
    return out


def family_inputs(N: int, C: int, gen: torch.Generator):
    """Benchmark rows: h or x ``[N, C]``, gamma, beta."""
    return [torch.randn(N, C, generator=gen), torch.randn(C, generator=gen), torch.randn(C, generator=gen)], {}


def on_rows(fn):
    """A dense eager baseline on the active rows viewed as ``[B, R, 1, C]`` (one sample's rows per batch entry)."""
    def build(inputs, layout):
        x, gamma, beta = inputs
        xe = x.detach().view(layout.batch_size, -1, 1, x.shape[1]).requires_grad_()
        return lambda: fn()(xe, gamma, beta)

    return build


def _on_dense_map(inputs, layout):
    """ConvNeXt V2's GRN on the full dense map with masked sites zero: what a dense-masked encoder pays."""
    x, gamma, beta = inputs
    xe = to_dense(x.detach(), layout).permute(0, 2, 3, 1).contiguous().requires_grad_()
    return lambda: reference.grn_dense(xe, gamma, beta)


@functools.cache
def compiled(fn):
    """``torch.compile(fn)``, made on first use (importing dynamo costs seconds: not at import)."""
    return torch.compile(fn)


def family_flops(*args, out_shape=None, **kwargs) -> int:
    """Elementwise ops and reductions: 0 by FlopCounterMode's convention (declared, so every op has a formula)."""
    return 0


def family_backward_inputs(inputs, outputs):
    """(x, gamma, gnorm): what a GRN-family backward op takes between the gradient and the offsets."""
    return inputs[0], inputs[1], outputs[1]


def offsets_of(layout) -> tuple:
    """The layout argument of the GRN-family ops: the ``[B + 1]`` row offsets (of a SparseLayout, or given)."""
    return (layout if isinstance(layout, torch.Tensor) else layout.offsets,)


GRN = register_op(OpSpec(
    name="grn", summary="Global Response Normalization on packed rows grouped by sample (or the dense layout)",
    fn=grn, reference=reference.grn_ref,
    impls=(Impl("ref", run=reference.grn_ref),
           Impl("cpu", forward="grn", backward="grn_backward", layout_args=offsets_of),
           Impl("cuda", forward="grn", backward="grn_backward", layout_args=offsets_of),
           Impl("triton", forward="grn_triton", backward="grn_backward_triton", layout_args=offsets_of)),
    samples=family_samples, grad_names=("dx", "dgamma", "dbeta"), backward_inputs=family_backward_inputs,
    category="GRN / GELU+GRN", bytes={"fwd": 3, "bwd": 5}, flops={"fwd": family_flops, "bwd": family_flops},
    bench=BenchSpec("grn", family_inputs, width=4, time_ref=True, reference_baseline="eager", baselines=(
        Baseline("eager", on_rows(lambda: reference.grn_dense)),
        Baseline("eager_dense", _on_dense_map),
        Baseline("compiled", on_rows(lambda: compiled(reference.grn_dense)), when=lambda device: device == "cuda"))),
))
