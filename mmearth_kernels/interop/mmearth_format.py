"""The MMEarth / FCMAE checkpoint layouts.

* :func:`load_sparse_checkpoint`: a released MMEarth / FCMAE *sparse* (MinkowskiEngine) checkpoint into
  :class:`ConvNeXtV2Encoder` (keys under ``encoder.``; ME wrappers ``.kernel``, ``.ln``, ``.linear``; kernel
  layouts in :mod:`mmearth_kernels.me_layout`).
* :func:`export_mmearth`: the encoder as the dense ConvNeXt V2 ``state_dict`` the upstream MMEarth fine-tuning
  code loads.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from .files import state_dict_of
from ..me_layout import me_to_conv, me_to_depthwise

if TYPE_CHECKING:  # type hints only: the models import nothing from here
    from ..models.convnextv2 import ConvNeXtV2Encoder


def load_sparse_checkpoint(encoder: ConvNeXtV2Encoder, checkpoint, strict: bool = True) -> list[str]:
    """Load a released sparse (ME-layout) checkpoint into ``encoder``; returns the keys it did not use
    (decoder, heads, loss weights). A path is read safely (:func:`.files.load_file`: upstream's ``args``
    allowlisted, nothing else). ``strict``: every encoder parameter must be present."""
    sd = state_dict_of(checkpoint)
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
                rest, v = "dwconv.weight", me_to_depthwise(v, 7)
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
                    me_to_conv(v, 2) if rest == "kernel" else v
            continue
        stem_map = {
            "initial_conv.0.kernel": ("stem.conv.weight", lambda t: me_to_conv(t, 3)),
            "initial_conv.0.bias": ("stem.conv.bias", None),
            "initial_conv.1.ln.weight": ("stem.norm1.weight", None),
            "initial_conv.1.ln.bias": ("stem.norm1.bias", None),
            "stem.0.kernel": ("stem.dwconv.weight", lambda t: me_to_depthwise(t, r)),
            "stem.0.bias": ("stem.dwconv.bias", None),
            "stem.1.ln.weight": ("stem.norm2.weight", None), "stem.1.ln.bias": ("stem.norm2.bias", None),
            "stem_orig.0.kernel": ("stem.conv.weight", lambda t: me_to_conv(t, r)),
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


def export_mmearth(encoder: ConvNeXtV2Encoder) -> dict[str, torch.Tensor]:
    """The encoder's weights in the upstream MMEarth dense fine-tuning model's layout (``initial_conv``/``stem``
    or ``stem_orig``, ``downsample_layers.0..2`` between stages, GRN ``[1, 1, 1, C]``; no head, no final norm).
    Its ``initial_conv`` has no padding (upstream pitfall P9), unlike pretraining: weights transfer, borders
    differ."""
    out = {}
    original = encoder.stem.kind == "original"
    for k, v in encoder.state_dict().items():
        v = v.detach().clone()
        if k.startswith("stem."):
            name = k[len("stem."):]
            if original:
                out["stem_orig." + name.replace("conv.", "0.").replace("norm.", "1.")] = v
            else:
                part, p = name.split(".")
                out[{"conv": "initial_conv.0", "norm1": "initial_conv.1", "dwconv": "stem.0",
                     "norm2": "stem.1"}[part] + "." + p] = v
            continue
        m = re.fullmatch(r"downsample\.(\d+)\.(norm|conv)\.(weight|bias)", k)
        if m:
            i, part, p = int(m.group(1)), m.group(2), m.group(3)
            out[f"downsample_layers.{i - 1}.{'0' if part == 'norm' else '1'}.{p}"] = v
            continue
        out[k] = v  # stages.i.j.* as upstream names them
    return out
