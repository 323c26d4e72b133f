"""What both Triton depthwise-conv modules (row-tiled and patch-tiled) do around their kernels: the taps-major
weight, the backward's outputs under ``output_mask``, the weight gradient from per-program partials."""

from __future__ import annotations

import torch


def taps_major(weight: torch.Tensor) -> torch.Tensor:
    """``[C, 1, K, K]`` -> ``[K*K, C]`` in the accumulation dtype (fp64 for fp64, fp32 otherwise)."""
    acc = torch.float64 if weight.dtype == torch.float64 else torch.float32
    # K*K, not -1: for C = 0 (an empty weight) the -1 could not be inferred
    return weight.reshape(weight.shape[0], weight.shape[2] * weight.shape[3]).t().to(acc).contiguous()


def start_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, output_mask):
    """What every conv backward begins with: ``(grad_out made contiguous, dx to fill (empty when not asked),
    finish(dw, db), early)``. ``finish`` returns the triple with the gradients not asked for as empty tensors;
    ``early`` is the whole result of an empty problem (no rows or no channels), else None."""
    need_dx, need_dw, need_db = output_mask
    dx = torch.empty_like(x) if need_dx else x.new_empty(0)

    def finish(dw, db):
        return dx, (dw if need_dw else weight.new_empty(0)), (db if need_db else weight.new_empty(0))

    empty = x.shape[0] == 0 or x.shape[1] == 0
    early = finish(torch.zeros_like(weight), weight.new_zeros(weight.shape[0])) if empty else None
    return grad_out.contiguous(), dx, finish, early


def conv_shape(x: torch.Tensor, weight: torch.Tensor):
    """``(N, C, K, K*K, taps-major weight)`` of a depthwise conv on packed rows."""
    N, C = x.shape
    K = weight.shape[-1]
    return N, C, K, K * K, taps_major(weight)


def reduce_parts(dw_part: torch.Tensor, db_part: torch.Tensor, weight: torch.Tensor):
    """Sum the ``[parts, K*K, C]`` / ``[parts, C]`` partials in part order (deterministic) into weight's layout."""
    C, _, K, _ = weight.shape
    dw = dw_part.sum(0).t().reshape(C, 1, K, K).to(weight.dtype).contiguous()
    return dw, db_part.sum(0).to(weight.dtype)


def with_config(autotuned, config):
    """The kernel to launch and its extra meta-parameters: the autotuner itself, or (``config`` given) the kernel
    under it with that config's block sizes and warps."""
    if config is None:
        return autotuned, {}
    return autotuned.fn, {**config.kwargs, "num_warps": config.num_warps, "maxnreg": config.maxnreg}


def ln_outputs(x: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor):
    """The fused conv + LayerNorm's outputs to fill, ``(y, y1, mean, rstd)`` (statistics ``[N]`` in the accumulation
    dtype; zero for an empty input), and the LayerNorm parameters in that dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    N = x.shape[0]
    stats = torch.empty if N and x.shape[1] else torch.zeros
    return (torch.empty_like(x), torch.empty_like(x), stats(N, dtype=acc, device=x.device),
            stats(N, dtype=acc, device=x.device), ln_weight.to(acc).contiguous(), ln_bias.to(acc).contiguous())
