"""``python -m train ... --dry-run``: what the run would be, without running it or writing anything.

Resolves the configuration (preset + options), builds the model on the host, and prints its parameters, the FLOPs
of one optimiser step (the model's and what the backend executes, forward and backward), the activation memory a
micro-batch keeps for its backward (measured: the bytes autograd saves in one forward at batch 1 on the CPU, scaled
to the micro-batch), the data (size of the train split, steps per epoch and in the schedule), the peak MFU would
use, and the time per step a given MFU implies.
"""

from __future__ import annotations

import os

import torch

from mmearth_kernels.masking import num_kept
from mmearth_kernels.testing import training_batch

from .config import TrainConfig
from .run import build_model, count_flops, demo_stem


def saved_activation_bytes(model, cfg: TrainConfig, kept: int) -> int:
    """Bytes autograd saves for the backward in one forward of one sample (fp32; bf16 autocast saves about half)."""
    batch = training_batch(1, cfg.crop, model.tasks)
    mask, _ = model.random_mask(1, generator=torch.Generator().manual_seed(0))
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()  # each storage once
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(batch["input"], batch, mask, kept)
    return sum(seen.values())


def _data_lines(cfg: TrainConfig) -> list[str]:
    stem = cfg.data or demo_stem(cfg)
    if not os.path.isfile(stem + ".h5"):
        if cfg.data:
            return [f"data            {stem}.h5 does not exist"]
        return [f"data            synthetic demo data (2000 tiles of 64 px, 90 % train) would be made in "
                f"{os.path.dirname(stem)} on first use"]
    from .data import MMEarthDataset

    n = len(MMEarthDataset(stem, split="train", crop=cfg.crop, seed=cfg.seed))
    per_epoch = n // cfg.batch_size // cfg.accum
    total = cfg.steps or int(cfg.epochs * max(1, per_epoch))
    return [f"data            {stem}.h5: {n} training samples; {per_epoch} optimiser steps per epoch "
            f"(batch {cfg.batch_size} x accum {cfg.accum} per process); {total} steps in the schedule"]


def dry_run(cfg: TrainConfig) -> None:
    model = build_model(cfg)
    kept = num_kept(model.grid ** 2, cfg.mask_ratio)
    flops, executed = count_flops(model, cfg, kept)
    params = sum(p.numel() for p in model.parameters())
    enc = sum(p.numel() for p in model.encoder.parameters())
    act = saved_activation_bytes(model, cfg, kept) * cfg.batch_size
    per_image = flops.total / (cfg.batch_size * cfg.accum)
    lines = [
        f"model           MP-MAE {cfg.model} ({cfg.backend} backend), {cfg.crop}/{cfg.patch_size}, "
        f"{len(model.tasks)} task(s), decoder {cfg.decoder} x {cfg.decoder_dim}",
        f"parameters      {params / 1e6:.2f} M ({enc / 1e6:.2f} M in the encoder)",
        f"mask            ratio {cfg.mask_ratio}: {kept} of {model.grid ** 2} patches kept per image",
        f"FLOPs per step  model {flops.total / 1e9:.2f} GFLOP (forward {flops.forward / 1e9:.2f}, backward "
        f"{flops.backward / 1e9:.2f}); executed by {cfg.backend}: {executed.total / 1e9:.2f} GFLOP",
        f"                per image {per_image / 1e9:.3f} GFLOP: encoder {flops.part('encoder') / 1e9:.2f}, "
        f"decoder {flops.part('decoder') / 1e9:.2f}, heads {flops.part('heads') / 1e9:.2f} GFLOP per step "
        "(2 x multiply-adds of convolutions and matmuls; FlopCounterMode's convention)",
        f"activations     ~{act / 2**20:.0f} MiB saved for the backward per micro-batch of {cfg.batch_size} (fp32; "
        f"measured at batch 1 on the CPU and scaled; bf16 autocast keeps about half)",
        *_data_lines(cfg),
    ]
    if cfg.peak_tflops:
        ms = flops.total / (0.01 * cfg.peak_tflops * 1e12) * 1e3
        lines.append(f"at 1 % MFU      of {cfg.peak_tflops:g} TFLOP/s: {ms:.1f} ms per step")
    print("\n".join(lines))
