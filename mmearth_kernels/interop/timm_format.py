"""timm's ConvNeXt V2 (``timm.create_model("convnextv2_<size>")``) both ways, without importing timm.

* :func:`export_timm`: our encoder (original stem) -> exactly the ``state_dict`` timm builds, loadable with
  ``strict=True``: ``stem.0/1``, ``stages.i.downsample.0/1``, ``stages.i.blocks.j.conv_dw / norm / mlp.fc1 /
  mlp.grn / mlp.fc2``, ``head.norm``. timm builds atto, femto, pico and nano with ``conv_mlp=True`` (the MLP
  as 1x1 convs, weights ``[out, in, 1, 1]``) and tiny and larger with Linear layers (``[out, in]``).
* :func:`load_timm`: a timm ConvNeXt V2 state dict (or model, or file) -> our encoder, adapting the stem to
  other input channels and patch sizes; returns what it adapted and the keys it did not use.

Geometry: timm's stem is a ``patch_size`` x ``patch_size`` conv with that stride (4 by default), ours
``patch_size // 8`` (the mask patch over the stage-4 stride of 8). So our ``img_size=224, patch_size=32``
encoder with ``in_chans=3`` is timm's default model, and MMEarth's 56/8 geometry with the original stem is
``timm.create_model("convnextv2_atto", patch_size=1, in_chans=12)`` (a 1x1 stem conv): the same function,
tested. The MMEarth stem (3x3 conv, LN, GELU, depthwise k = s, LN) has no timm counterpart.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch

from .files import state_dict_of

if TYPE_CHECKING:  # type hints only: the models import nothing from here
    from ..models.convnextv2 import ConvNeXtV2Encoder

CONV_MLP_SIZES = ("atto", "femto", "pico", "nano")  # timm: conv_mlp=True for these (stage-1 width < 96)
_BLOCK = {"dwconv": "conv_dw", "norm": "norm", "pwconv1": "mlp.fc1", "pwconv2": "mlp.fc2", "grn.gamma": "mlp.grn",
          "grn.beta": "mlp.grn"}


def _conv_mlp(encoder: ConvNeXtV2Encoder, conv_mlp: bool | None) -> bool:
    # timm builds every ConvNeXt V2 narrower than tiny (96 channels at stage 1) with conv_mlp=True
    return encoder.dims[0] < 96 if conv_mlp is None else conv_mlp


def _timm_key(key: str) -> str:
    """Our parameter name -> timm's."""
    if key.startswith("stem."):
        return {"stem.conv.weight": "stem.0.weight", "stem.conv.bias": "stem.0.bias",
                "stem.norm.weight": "stem.1.weight", "stem.norm.bias": "stem.1.bias"}[key]
    m = re.fullmatch(r"downsample\.(\d+)\.(norm|conv)\.(weight|bias)", key)
    if m:
        return f"stages.{m.group(1)}.downsample.{'0' if m.group(2) == 'norm' else '1'}.{m.group(3)}"
    i, j, rest = re.fullmatch(r"stages\.(\d+)\.(\d+)\.(.+)", key).groups()
    if rest.startswith("grn."):
        return f"stages.{i}.blocks.{j}.mlp.grn.{'weight' if rest == 'grn.gamma' else 'bias'}"
    layer, param = rest.rsplit(".", 1)
    return f"stages.{i}.blocks.{j}.{_BLOCK[layer]}.{param}"


def _check_original_stem(encoder: ConvNeXtV2Encoder, what: str) -> None:
    if encoder.stem.kind != "original":
        raise ValueError(f"{what}: timm's ConvNeXt V2 has no MMEarth stem (3x3 conv + depthwise); build the encoder "
                         f"with stem='original' (pretraining: --stem original), or export layout='mmearth' for the "
                         f"upstream fine-tuning code")


def export_timm(encoder: ConvNeXtV2Encoder, conv_mlp: bool | None = None, head_norm=None) -> dict[str, torch.Tensor]:
    """The encoder as timm's ``convnextv2_<size>`` state dict (load it with ``strict=True`` into
    ``timm.create_model(f"convnextv2_{size}", patch_size=encoder.patch_size // 8, in_chans=encoder.in_chans)``;
    ``num_classes=0`` for no classifier, else add your own ``head.fc``).

    Args:
        conv_mlp: how the timm model builds its MLP; None: timm's choice for this size (:data:`CONV_MLP_SIZES`).
        head_norm: ``head.norm`` (timm's final LayerNorm, applied after pooling in ``forward_head``). Our encoder
            has none, so by default it is written as timm initialises it (weight 1, bias 0): ``forward_features``
            equals our encoder's output, and ``forward_head`` normalises the pooled features as a fresh timm
            fine-tune would. Pass an ``nn.LayerNorm`` over the last stage's channels to write trained values.
    """
    _check_original_stem(encoder, "export_timm")
    conv = _conv_mlp(encoder, conv_mlp)
    out = {}
    for key, v in encoder.state_dict().items():
        v = v.detach().clone()
        name = _timm_key(key)
        if ".mlp.grn." in name:
            v = v.reshape(-1)
        elif conv and (".mlp.fc1.weight" in name or ".mlp.fc2.weight" in name):
            v = v[:, :, None, None]
        out[name] = v
    c = encoder.out_channels
    if head_norm is None:
        out["head.norm.weight"], out["head.norm.bias"] = torch.ones(c), torch.zeros(c)
    else:
        if tuple(head_norm.weight.shape) != (c,):
            raise ValueError(f"head_norm must be a LayerNorm over {c} channels, got weight "
                             f"{tuple(head_norm.weight.shape)}")
        out["head.norm.weight"] = head_norm.weight.detach().clone()
        out["head.norm.bias"] = head_norm.bias.detach().clone()
    return out


def adapt_stem(weight: torch.Tensor, in_chans: int, kernel: int) -> tuple[torch.Tensor, list[str]]:
    """A patchify stem kernel ``[O, I, k, k]`` for ``in_chans`` inputs and a ``kernel`` x ``kernel`` patch.

    Channels (timm's rule for ``in_chans != 3``): 1 input = the sum of the filters over their channels; more =
    the filters repeated over the new channels and scaled by ``I / in_chans``, so a constant image of any
    channel count gives the same response. Patch: a k x k filter becomes ``kernel`` x ``kernel`` by summing
    blocks of taps (k a multiple of ``kernel``), which again keeps the response to a locally constant image.
    An initialisation, not an equivalence: say so to whoever reads the run's log (the returned notes)."""
    notes = []
    out_c, cin, k, _ = weight.shape
    w = weight.detach().clone().float()
    if in_chans != cin:
        if in_chans == 1:
            w = w.sum(dim=1, keepdim=True)
            notes.append(f"stem: {cin} input channels summed into 1")
        else:
            reps = -(-in_chans // cin)
            w = w.repeat(1, reps, 1, 1)[:, :in_chans] * (cin / in_chans)
            notes.append(f"stem: {cin} input channels -> {in_chans} (filters repeated, scaled by {cin}/{in_chans})")
    if kernel != k:
        if kernel < 1 or k % kernel:
            raise ValueError(f"the timm stem is {k}x{k}; a {kernel}x{kernel} stem cannot be made from it by summing "
                             f"blocks of taps ({k} is not a multiple of {kernel})")
        f = k // kernel
        w = w.reshape(out_c, w.shape[1], kernel, f, kernel, f).sum(dim=(3, 5))
        notes.append(f"stem: {k}x{k} patch -> {kernel}x{kernel} (taps summed in {f}x{f} blocks)")
    return w.to(weight.dtype), notes


def load_timm(encoder: ConvNeXtV2Encoder, weights) -> dict:
    """Load timm ConvNeXt V2 weights (a state dict, a timm model, or a ``.safetensors``/``.pth`` file) into
    ``encoder`` (original stem). The stem is adapted to the encoder's input channels and patch
    (:func:`adapt_stem`); every other tensor must match exactly.

    Returns ``{"adapted": [notes], "unused": [timm keys not loaded, e.g. head.*]}``.
    """
    _check_original_stem(encoder, "load_timm")
    sd = weights.state_dict() if hasattr(weights, "state_dict") and not isinstance(weights, dict) else \
        state_dict_of(weights, "timm weights")
    ours = encoder.state_dict()
    want = {_timm_key(k): k for k in ours}
    missing = [t for t in want if t not in sd]
    if missing:
        raise ValueError(f"timm weights lack {missing[:4]}{' ...' if len(missing) > 4 else ''}: not a ConvNeXt V2 of "
                         f"depths {encoder.depths} (keys like stages.i.blocks.j.conv_dw.weight expected)")
    state, notes = {}, []
    for tkey, key in want.items():
        v = sd[tkey]
        if key == "stem.conv.weight":
            v, notes = adapt_stem(v, encoder.in_chans, ours[key].shape[-1])
        v = v.reshape(ours[key].shape) if v.numel() == ours[key].numel() and v.dim() != ours[key].dim() else v
        if v.shape != ours[key].shape:
            raise ValueError(f"timm weight {tkey} has shape {tuple(v.shape)}, the encoder's {key} is "
                             f"{tuple(ours[key].shape)} (another ConvNeXt V2 size? the encoder is depths "
                             f"{encoder.depths}, dims {encoder.dims})")
        state[key] = v
    encoder.load_state_dict(state)
    return {"adapted": notes, "unused": sorted(k for k in sd if k not in want)}
