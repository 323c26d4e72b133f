"""Checkpoint interop for the encoder.

* :func:`load_sparse_checkpoint`: a released MMEarth / FCMAE *sparse* (MinkowskiEngine) checkpoint into
  :class:`ConvNeXtV2Encoder` (keys under ``encoder.``; ME wrappers ``.kernel``, ``.ln``, ``.linear``).
* :func:`export_dense`: the encoder as a dense ConvNeXt V2 ``state_dict`` in the layout the upstream
  MMEarth fine-tuning code loads (``layout="mmearth"``) or timm's ``convnextv2_*`` (``layout="timm"``,
  original stem only: timm has no MMEarth stem).

MinkowskiEngine kernel layouts: a regular conv kernel is ``[K*K, Cin, Cout]`` (``[Cin, Cout]`` when
K*K = 1) and a depthwise one ``[K*K, C]``, with offset index ``k = kh + K * kw`` (the first spatial
axis, H, varies fastest); biases and GRN parameters are ``[1, C]``. Both act as
cross-correlations, like ``nn.Conv2d``, so no flip is needed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # type hints only: the encoder imports nothing from here, and this stays a leaf
    from .convnextv2 import ConvNeXtV2Encoder


def _me_to_conv(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """ME ``[k*k, Cin, Cout]`` (``[Cin, Cout]`` when k = 1) -> ``[Cout, Cin, k, k]``."""
    if kernel.dim() == 2:  # ME stores a kernel of volume 1 without the offset axis
        kernel = kernel.unsqueeze(0)
    kk, cin, cout = kernel.shape
    return kernel.reshape(k, k, cin, cout).permute(3, 2, 1, 0).contiguous()  # [kw, kh, ci, co] -> [co, ci, kh, kw]


def _me_to_depthwise(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """ME depthwise ``[k*k, C]`` -> ``[C, 1, k, k]``."""
    c = kernel.shape[1]
    return kernel.reshape(k, k, c).permute(2, 1, 0).unsqueeze(1).contiguous()


def conv_to_me(weight: torch.Tensor) -> torch.Tensor:
    """``[Cout, Cin, k, k]`` -> ME ``[k*k, Cin, Cout]`` (inverse of the loader's mapping)."""
    return weight.permute(3, 2, 1, 0).reshape(-1, weight.shape[1], weight.shape[0]).contiguous()


def depthwise_to_me(weight: torch.Tensor) -> torch.Tensor:
    """``[C, 1, k, k]`` -> ME ``[k*k, C]``."""
    return weight[:, 0].permute(2, 1, 0).reshape(-1, weight.shape[0]).contiguous()


def _read(checkpoint) -> dict[str, torch.Tensor]:
    if isinstance(checkpoint, (str, bytes)) or hasattr(checkpoint, "__fspath__"):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict):
        raise TypeError(f"checkpoint must be a path or a state_dict, got {type(checkpoint).__name__}")
    for key in ("model", "state_dict"):  # upstream saves {"model": state_dict, "optimizer": ...}
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
    return checkpoint


def load_sparse_checkpoint(encoder: ConvNeXtV2Encoder, checkpoint, strict: bool = True) -> list[str]:
    """Load a released sparse (ME-layout) checkpoint into ``encoder``; returns the keys it did not use
    (decoder, heads, loss weights). Loaded with ``weights_only=True``. ``strict``: every encoder
    parameter must be present."""
    sd = _read(checkpoint)
    r = encoder.reduction
    has_orig = any(k.startswith("encoder.stem_orig.") for k in sd)
    has_mmearth = any(k.startswith("encoder.initial_conv.") for k in sd)
    if (has_orig and encoder.stem.kind != "original") or (has_mmearth and encoder.stem.kind != "mmearth"):
        raise ValueError(f"the checkpoint has the {'original' if has_orig else 'MMEarth'} stem but the encoder was "
                         f"built with stem={encoder.stem.kind!r}")
    out, unused = {}, []
    for key, v in sd.items():
        k = key[len("encoder."):] if key.startswith("encoder.") else None
        if k is None:
            unused.append(key)
            continue
        if k.endswith(".bias") and v.dim() == 2 and v.shape[0] == 1 and ".grn." not in k:
            v = v.reshape(-1)
        m = re.fullmatch(r"stages\.(\d+)\.(\d+)\.(.+)", k)
        if m:
            i, j, rest = m.groups()
            rest = rest.replace("norm.ln.", "norm.").replace("pwconv1.linear.", "pwconv1.") \
                       .replace("pwconv2.linear.", "pwconv2.")
            if rest == "dwconv.kernel":
                rest, v = "dwconv.weight", _me_to_depthwise(v, 7)
            elif rest in ("grn.gamma", "grn.beta"):
                v = v.reshape(1, 1, 1, -1)
            out[f"stages.{i}.{j}.{rest}"] = v
            continue
        m = re.fullmatch(r"downsample_layers\.(\d+)\.([01])\.(.+)", k)
        if m:
            i, part, rest = int(m.group(1)), m.group(2), m.group(3)
            if part == "0":
                out[f"downsample.{i + 1}.norm.{rest.replace('ln.', '')}"] = v
            else:
                out[f"downsample.{i + 1}.conv.{'weight' if rest == 'kernel' else rest}"] = \
                    _me_to_conv(v, 2) if rest == "kernel" else v
            continue
        stem_map = {
            "initial_conv.0.kernel": ("stem.conv.weight", lambda t: _me_to_conv(t, 3)),
            "initial_conv.0.bias": ("stem.conv.bias", None),
            "initial_conv.1.ln.weight": ("stem.norm1.weight", None),
            "initial_conv.1.ln.bias": ("stem.norm1.bias", None),
            "stem.0.kernel": ("stem.dwconv.weight", lambda t: _me_to_depthwise(t, r)),
            "stem.0.bias": ("stem.dwconv.bias", None),
            "stem.1.ln.weight": ("stem.norm2.weight", None), "stem.1.ln.bias": ("stem.norm2.bias", None),
            "stem_orig.0.kernel": ("stem.conv.weight", lambda t: _me_to_conv(t, r)),
            "stem_orig.0.bias": ("stem.conv.bias", None),
            "stem_orig.1.ln.weight": ("stem.norm.weight", None), "stem_orig.1.ln.bias": ("stem.norm.bias", None),
        }
        if k in stem_map:
            name, fn = stem_map[k]
            out[name] = fn(v) if fn else v
        else:
            unused.append(key)
    params = encoder.state_dict()
    for name, v in out.items():
        if name in params and params[name].shape != v.shape:
            raise ValueError(f"checkpoint parameter for {name} has shape {tuple(v.shape)}, the encoder expects "
                             f"{tuple(params[name].shape)} (different model size, input channels or patch size?)")
    missing, unexpected = encoder.load_state_dict(out, strict=False)
    if unexpected:
        raise ValueError(f"checkpoint keys map to no encoder parameter: {unexpected[:5]} (different stem or size?)")
    if strict and missing:
        raise ValueError(f"checkpoint lacks encoder parameters {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                         f"(is it a sparse MMEarth/FCMAE checkpoint of this size and stem?)")
    return unused


def export_dense(encoder: ConvNeXtV2Encoder, layout: str = "mmearth") -> dict[str, torch.Tensor]:
    """The encoder's weights as a dense ConvNeXt V2 state_dict (no head, no final norm).

    ``layout="mmearth"``: the upstream MMEarth fine-tuning model (``initial_conv``/``stem`` or
    ``stem_orig``, ``downsample_layers.0..2`` between stages, GRN ``[1, 1, 1, C]``). Note that its
    ``initial_conv`` has no padding (upstream pitfall P9), unlike pretraining: weights transfer, borders
    differ. ``layout="timm"``: timm's ``convnextv2_*`` (``stem.0/1``, ``stages.i.downsample``,
    ``stages.i.blocks.j.conv_dw`` / ``mlp.fc1`` / ``mlp.grn.weight`` [C] / ``mlp.fc2``); original stem only.
    """
    if layout not in ("mmearth", "timm"):
        raise ValueError(f"layout must be 'mmearth' or 'timm', got {layout!r}")
    sd = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
    out = {}
    kind = encoder.stem.kind
    if layout == "timm" and kind != "original":
        raise ValueError("timm's ConvNeXt V2 has no MMEarth stem (3x3 conv + depthwise); export layout='mmearth' "
                         "or train with stem='original'")
    for k, v in sd.items():
        if k.startswith("stem."):
            name = k[len("stem."):]
            if layout == "timm":
                out[{"conv.weight": "stem.0.weight", "conv.bias": "stem.0.bias", "norm.weight": "stem.1.weight",
                     "norm.bias": "stem.1.bias"}[name]] = v
            elif kind == "original":
                out["stem_orig." + name.replace("conv.", "0.").replace("norm.", "1.")] = v
            else:
                part, p = name.split(".")
                out[{"conv": "initial_conv.0", "norm1": "initial_conv.1", "dwconv": "stem.0",
                     "norm2": "stem.1"}[part] + "." + p] = v
            continue
        m = re.fullmatch(r"downsample\.(\d+)\.(norm|conv)\.(weight|bias)", k)
        if m:
            i, part, p = int(m.group(1)), m.group(2), m.group(3)
            idx = "0" if part == "norm" else "1"
            out[f"stages.{i}.downsample.{idx}.{p}" if layout == "timm" else f"downsample_layers.{i - 1}.{idx}.{p}"] = v
            continue
        m = re.fullmatch(r"stages\.(\d+)\.(\d+)\.(.+)", k)
        i, j, rest = m.groups()
        if layout == "timm":
            rest = {"dwconv.weight": "conv_dw.weight", "dwconv.bias": "conv_dw.bias",
                    "pwconv1.weight": "mlp.fc1.weight", "pwconv1.bias": "mlp.fc1.bias",
                    "pwconv2.weight": "mlp.fc2.weight", "pwconv2.bias": "mlp.fc2.bias",
                    "grn.gamma": "mlp.grn.weight", "grn.beta": "mlp.grn.bias"}.get(rest, rest)
            if "grn" in rest:
                v = v.reshape(-1)
            out[f"stages.{i}.blocks.{j}.{rest}"] = v
        else:
            out[f"stages.{i}.{j}.{rest}"] = v
    return out
