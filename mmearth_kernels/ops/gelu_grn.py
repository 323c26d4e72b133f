"""``GRN(GELU(h))`` on packed rows grouped by sample: the MLP's activation and GRN as one op.

In a ConvNeXt V2 block, GELU and GRN are half of the bytes moved (docs/bytes-model.md): GELU reads and
writes the 4C-wide hidden tensor, GRN reads it twice and writes it once, and autograd keeps both GELU's
input and its output. Fused, GELU is applied on load (and recomputed in the backward), its output never
exists: forward 20 -> 12 x C elements per row, backward 32 -> 20, one 4C-wide saved tensor instead of two.

Impls: ``"triton"`` (``mmearth_kernels/triton_kernels/grn.py`` with ``GELU=True``) and ``"cpu"`` (the C++ GRN
kernels with a vectorised GELU on load, ``csrc/cpu/grn.cpp``, ``vec_math.h``) are fused; ``"cuda"`` is not yet:
torch's GELU, then the CUDA GRN kernel; ``"ref"`` is :func:`mmearth_kernels.reference.gelu_grn_ref`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import reference
from ..layout import SparseLayout
from . import _checks
from .grn import (BACKWARD_SCHEMA, FORWARD_SCHEMA, GRN, compiled, check_family_args, family_backward_inputs,
                  family_flops, family_inputs, family_samples, offsets_of, on_rows, register_family, _offsets_for)
from .registry import Baseline, BenchSpec, Impl, OpSpec, register_op, triton_op

triton_op("gelu_grn_triton", FORWARD_SCHEMA.replace("Tensor x,", "Tensor h,"), "grn", "forward", gelu=True)
triton_op("gelu_grn_backward_triton", BACKWARD_SCHEMA.replace("Tensor x,", "Tensor h,"), "grn", "backward", gelu=True)
# the saved input is h (GELU's input): GELU's output is recomputed in the backward, never stored
register_family("gelu_grn", "gelu_grn_backward")
register_family("gelu_grn_triton", "gelu_grn_backward_triton")


def gelu_grn(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, layout: SparseLayout | torch.Tensor, *,
             eps: float = 1e-6, stats: str = "per_sample", impl: str = "auto") -> torch.Tensor:
    """``GRN(GELU(h))`` over packed rows: exactly ``grn(F.gelu(h), gamma, beta, layout, ...)``, fused.

    Args:
        h: packed ``[N, C]`` rows (the first Linear's output), contiguous.
        gamma, beta: ``C`` values in any shape (``[C]`` or upstream's ``[1, 1, 1, C]``).
        layout: the :class:`SparseLayout` of h's stage, or its ``[B + 1]`` int32 row offsets.
        eps, stats: as :func:`mmearth_kernels.grn`.
        impl: one of ``mmearth_kernels.IMPLS``; ``"cuda"`` is torch's GELU, then the CUDA GRN kernel (unfused).
    """
    _checks.check_tensor(h, "h", dim=2)
    if layout is None:
        raise ValueError("gelu_grn takes packed [N, C] rows and their layout (a SparseLayout or its [B + 1] offsets)")
    g, b = check_family_args("h", h, gamma, beta, eps, stats)
    off = _offsets_for(h, layout, None)
    run = GELU_GRN.resolve(impl, h.device)
    if off.shape[0] < 2:  # an empty batch: the reference handles it
        run = GELU_GRN.impl("ref")
    return run((h, g, b), off, (float(eps), stats == "batch"))


def _gelu_then_grn(kind: str):
    """The unfused impl of ``kind``: torch's GELU, then GRN's ``kind`` kernel."""
    return lambda h, gamma, beta, offsets, eps, batch_stats: GRN.impl(kind)((F.gelu(h), gamma, beta), offsets,
                                                                            (eps, batch_stats))


def _unfused(inputs, layout):
    """``F.gelu`` then this library's fastest GRN on the same rows: what the ``sparse`` backend runs."""
    h, gamma, beta = inputs
    return lambda: GRN.fn(F.gelu(h), gamma, beta, layout)


def _gelu_grn_dense(h, gamma, beta):
    return reference.grn_dense(F.gelu(h), gamma, beta)


GELU_GRN = register_op(OpSpec(
    name="gelu_grn", summary="GRN(GELU(h)) on packed rows: the MLP's activation and GRN in one pass each way",
    fn=gelu_grn, reference=reference.gelu_grn_ref,
    impls=(Impl("ref", run=reference.gelu_grn_ref),
           Impl("cpu", forward="gelu_grn", backward="gelu_grn_backward", layout_args=offsets_of),
           Impl("cuda", run=_gelu_then_grn("cuda"), uses="grn"),
           Impl("triton", forward="gelu_grn_triton", backward="gelu_grn_backward_triton", layout_args=offsets_of)),
    samples=family_samples, grad_names=("dh", "dgamma", "dbeta"), backward_inputs=family_backward_inputs,
    category="GRN / GELU+GRN", bytes={"fwd": 3, "bwd": 5}, flops={"fwd": family_flops, "bwd": family_flops},
    bench=BenchSpec("gelu_grn", family_inputs, width=4, reference_baseline="unfused", baselines=(
        Baseline("unfused", _unfused),
        Baseline("eager", on_rows(lambda: _gelu_grn_dense)),
        Baseline("compiled", on_rows(lambda: compiled(_gelu_grn_dense)), when=lambda device: device == "cuda"))),
))
