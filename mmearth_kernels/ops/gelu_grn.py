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

from .. import _extension
from .. import triton_kernels as _triton
from ..layout import SparseLayout
from ..reference import gelu_grn_ref
from . import _checks, _impl
from .grn import STATS, _autograd_for, _fake_backward, _fake_forward, _offsets_for, _setup_context, grn

OP = "gelu_grn"  # its CPU/CUDA impls are GELU + the GRN kernel: availability follows grn's (_impl.KERNELS_OF)

if _extension.LOADED:
    torch.library.register_fake("mmearth_kernels::gelu_grn")(_fake_forward)
    torch.library.register_fake("mmearth_kernels::gelu_grn_backward")(_fake_backward)
    torch.library.register_autograd("mmearth_kernels::gelu_grn",
                                    _autograd_for(torch.ops.mmearth_kernels.gelu_grn_backward),
                                    setup_context=_setup_context)

if _triton.HAS_TRITON:

    @torch.library.custom_op("mmearth_kernels::gelu_grn_triton", mutates_args=())
    def gelu_grn_triton(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, offsets: torch.Tensor, eps: float,
                        batch_stats: bool) -> tuple[torch.Tensor, torch.Tensor]:
        from ..triton_kernels import grn as kernels

        return kernels.forward(h, gamma, beta, offsets, eps, batch_stats, gelu=True)

    @torch.library.custom_op("mmearth_kernels::gelu_grn_backward_triton", mutates_args=())
    def gelu_grn_backward_triton(grad_out: torch.Tensor, h: torch.Tensor, gamma: torch.Tensor, gnorm: torch.Tensor,
                                 offsets: torch.Tensor, eps: float, batch_stats: bool, output_mask: list[bool]
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from ..triton_kernels import grn as kernels

        return kernels.backward(grad_out, h, gamma, gnorm, offsets, eps, batch_stats, output_mask, gelu=True)

    gelu_grn_triton.register_fake(_fake_forward)
    gelu_grn_backward_triton.register_fake(_fake_backward)
    # the saved input is h (GELU's input): GELU's output is recomputed in the backward, never stored
    gelu_grn_triton.register_autograd(_autograd_for(gelu_grn_backward_triton), setup_context=_setup_context)


def gelu_grn(h: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, layout: SparseLayout | torch.Tensor, *,
             eps: float = 1e-6, stats: str = "per_sample", impl: str = "auto") -> torch.Tensor:
    """``GRN(GELU(h))`` over packed rows: exactly ``grn(F.gelu(h), gamma, beta, layout, ...)``, fused on Triton.

    Args:
        h: packed ``[N, C]`` rows (the first Linear's output), contiguous.
        gamma, beta: ``C`` values in any shape (``[C]`` or upstream's ``[1, 1, 1, C]``).
        layout: the :class:`SparseLayout` of h's stage, or its ``[B + 1]`` int32 row offsets.
        eps, stats: as :func:`mmearth_kernels.grn`.
        impl: ``"auto"`` (fused: Triton on CUDA, C++ on CPU), ``"ref"``, ``"cpu"``, ``"cuda"`` (unfused),
            ``"triton"``.
    """
    _checks.check_tensor(h, "h", dim=2)
    if stats not in STATS:
        raise ValueError(f"stats must be one of {STATS}, got {stats!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if layout is None:
        raise ValueError("gelu_grn takes packed [N, C] rows and their layout (a SparseLayout or its [B + 1] offsets)")
    C = h.shape[1]
    gamma, beta = _checks.autocast_params(h, gamma, beta)
    for name, t in (("gamma", gamma), ("beta", beta)):
        _checks.check_tensor(t, name, like=h)
        if t.numel() != C:
            raise ValueError(f"{name} must hold C = {C} values (h's last dim), got shape {tuple(t.shape)}")
    off = _offsets_for(h, layout, None)
    impl = _impl.resolve(OP, impl, h.device)
    g, b = gamma.reshape(C), beta.reshape(C)
    if impl == "ref" or off.shape[0] < 2:  # an empty batch: the reference handles it
        return gelu_grn_ref(h, g, b, off, eps, stats == "batch")
    if impl == "triton":
        y, _ = torch.ops.mmearth_kernels.gelu_grn_triton(h, g, b, off, float(eps), stats == "batch")
        return y
    if impl == "cpu" and _extension.has_kernel("gelu_grn", "CPU"):
        y, _ = torch.ops.mmearth_kernels.gelu_grn(h, g, b, off, float(eps), stats == "batch")
        return y
    return grn(F.gelu(h), g, b, layout, eps=eps, stats=stats, impl=impl)  # the layout as given: checked once
