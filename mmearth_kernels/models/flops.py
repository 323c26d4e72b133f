"""FLOPs of one MP-MAE training step, counted from the model's shapes at set-up (no step is run).

Convention (``torch.utils.flop_counter.FlopCounterMode``'s, and the MFU convention of PaLM, torchtitan and
nanoGPT): 2 x the multiply-adds of convolutions and matmuls. LayerNorm, GELU, GRN, residual adds, the losses and
the optimiser count 0. Backward: every conv / linear computes its input gradient and its weight gradient, each as
many multiply-adds as its forward; the first layer has no input gradient (the image needs none) and a frozen
weight no weight gradient. A training step is therefore about 3 x its forward.

Two counts per step (``docs/profiling.md``):

* ``model``: the FLOPs the *sparse* model's own maths needs at the run's mask ratio: encoder layers on the
  visible sites only (the submanifold depthwise conv counts all K*K taps of every active output; masked
  neighbours are zeros), the decoder dense on the g x g grid, the pixel heads at the masked tokens. The same for
  every backend, so TFLOP/s and MFU computed from it rank backends by speed alone (MFU, not HFU).
* ``executed``: what a backend actually computes: the dense backends run the encoder on every site.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from ..tasks import IMAGE_TASKS, PIXEL_TASKS


@dataclass(frozen=True)
class Layer:
    """One conv or linear of the step: its forward multiply-adds and which gradients its backward computes."""
    name: str
    macs: int
    input_grad: bool = True
    weight_grad: bool = True

    @property
    def forward(self) -> int:
        return 2 * self.macs

    @property
    def backward(self) -> int:
        return 2 * self.macs * (int(self.input_grad) + int(self.weight_grad))


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one optimiser step (``micro_batches`` micro-batches of ``batch`` samples), per process."""
    batch: int
    micro_batches: int
    layers: tuple[Layer, ...] = field(repr=False)

    @property
    def forward(self) -> int:
        return self.micro_batches * sum(layer.forward for layer in self.layers)

    @property
    def backward(self) -> int:
        return self.micro_batches * sum(layer.backward for layer in self.layers)

    @property
    def total(self) -> int:
        return self.forward + self.backward

    def part(self, prefix: str) -> int:
        """Forward + backward FLOPs per step of the layers whose name starts with ``prefix`` ("encoder", ...)."""
        return self.micro_batches * sum(x.forward + x.backward for x in self.layers if x.name.startswith(prefix))


def _conv_macs(conv: nn.Conv2d, out_sites: int) -> int:
    k = conv.kernel_size[0] * conv.kernel_size[1]
    return out_sites * k * (conv.in_channels // conv.groups) * conv.out_channels


def _trains(module: nn.Module) -> bool:
    return module.weight.requires_grad


def encoder_layers(encoder, batch: int, kept: int, all_sites: bool) -> list[Layer]:
    """The encoder's convs and linears with their output sites: the visible ones (``kept`` patches per sample)
    or, ``all_sites``, every site of the grid (what a dense backend computes)."""
    g, img = encoder.grid, encoder.img_size
    patches = g * g if all_sites else kept
    per_patch_in = (img // g) ** 2                                     # input pixels per patch
    sites = [batch * patches * (8 >> i) ** 2 for i in range(4)]        # stage i runs at 8g >> i
    stem = encoder.stem
    out: list[Layer] = []
    if stem.kind == "mmearth":  # 3x3 conv at the input resolution (its input is the image: no input gradient)
        out.append(Layer("encoder.stem.conv", _conv_macs(stem.conv, batch * patches * per_patch_in), False,
                         _trains(stem.conv)))
        out.append(Layer("encoder.stem.dwconv", _conv_macs(stem.dwconv, sites[0]), True, _trains(stem.dwconv)))
    else:
        out.append(Layer("encoder.stem.conv", _conv_macs(stem.conv, sites[0]), False, _trains(stem.conv)))
    for i in range(4):
        if i > 0:
            ds = encoder.downsample[i].conv
            out.append(Layer(f"encoder.downsample.{i}", _conv_macs(ds, sites[i]), True, _trains(ds)))
        for j, blk in enumerate(encoder.stages[i]):
            out += block_layers(blk, sites[i], f"encoder.stages.{i}.{j}")
    return out


def block_layers(blk, sites: int, name: str) -> list[Layer]:
    """A ConvNeXt V2 block at ``sites`` positions: the 7x7 depthwise conv and the two pointwise linears."""
    lin1, lin2 = blk.pwconv1, blk.pwconv2
    return [Layer(f"{name}.dwconv", _conv_macs(blk.dwconv, sites), True, _trains(blk.dwconv)),
            Layer(f"{name}.pwconv1", sites * lin1.in_features * lin1.out_features, True, _trains(lin1)),
            Layer(f"{name}.pwconv2", sites * lin2.in_features * lin2.out_features, True, _trains(lin2))]


def decoder_layers(model, batch: int, kept: int) -> list[Layer]:
    """Projection, decoder block(s) (dense on the g x g grid), pixel heads at the masked tokens, image heads."""
    g = model.grid
    tokens, masked = batch * g * g, batch * (g * g - kept)
    out = [Layer("decoder.proj", _conv_macs(model.proj, tokens), True, _trains(model.proj))]
    blocks = [model.decoder] if model.decoder_mode == "shared" else [model.decoder[t] for t in model.tasks]
    for i, blk in enumerate(blocks):
        out += block_layers(blk, tokens, f"decoder.block.{i}")
    for t in model.tasks:
        if t in PIXEL_TASKS:
            head = model.pixel_heads[t]
            out.append(Layer(f"heads.{t}", masked * head.in_channels * head.out_channels, True, _trains(head)))
        elif t in IMAGE_TASKS:
            head = model.image_heads[t]
            out.append(Layer(f"heads.{t}", batch * head.in_features * head.out_features, True, _trains(head)))
    return out


def step_flops(model, batch: int, kept: int, micro_batches: int = 1, all_sites: bool = False) -> StepFlops:
    """FLOPs of one optimiser step of ``model`` (an :class:`~mmearth_kernels.models.MPMAE`) on ``micro_batches``
    micro-batches of ``batch`` samples keeping ``kept`` patches each. ``all_sites=False``: the model FLOPs (the
    sparse model's maths); True: the encoder on every site, as a dense backend executes it."""
    layers = encoder_layers(model.encoder, batch, kept, all_sites) + decoder_layers(model, batch, kept)
    return StepFlops(batch, micro_batches, tuple(layers))
