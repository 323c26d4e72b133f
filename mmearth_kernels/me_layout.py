"""MinkowskiEngine kernel layouts <-> ``nn.Conv2d`` weights.

A regular ME conv kernel is ``[K*K, Cin, Cout]`` (``[Cin, Cout]`` when K*K = 1) and a depthwise one ``[K*K, C]``,
with offset index ``k = kh + K * kw`` (the first spatial axis, H, varies fastest); biases and GRN parameters
are ``[1, C]``. Both act as cross-correlations, like ``nn.Conv2d``, so no flip is needed.
"""

from __future__ import annotations

import torch


def me_to_conv(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """ME ``[k*k, Cin, Cout]`` (``[Cin, Cout]`` when k = 1) -> ``[Cout, Cin, k, k]``."""
    if kernel.dim() == 2:  # ME stores a kernel of volume 1 without the offset axis
        kernel = kernel.unsqueeze(0)
    kk, cin, cout = kernel.shape
    return kernel.reshape(k, k, cin, cout).permute(3, 2, 1, 0).contiguous()  # [kw, kh, ci, co] -> [co, ci, kh, kw]


def me_to_depthwise(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """ME depthwise ``[k*k, C]`` -> ``[C, 1, k, k]``."""
    c = kernel.shape[1]
    return kernel.reshape(k, k, c).permute(2, 1, 0).unsqueeze(1).contiguous()


def conv_to_me(weight: torch.Tensor) -> torch.Tensor:
    """``[Cout, Cin, k, k]`` -> ME ``[k*k, Cin, Cout]`` (inverse of the loader's mapping)."""
    return weight.permute(3, 2, 1, 0).reshape(-1, weight.shape[1], weight.shape[0]).contiguous()


def depthwise_to_me(weight: torch.Tensor) -> torch.Tensor:
    """``[C, 1, k, k]`` -> ME ``[k*k, C]``."""
    return weight[:, 0].permute(2, 1, 0).reshape(-1, weight.shape[0]).contiguous()
