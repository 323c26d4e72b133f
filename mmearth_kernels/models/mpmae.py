"""MMEarth's Multi-Pretext Masked Autoencoder (MP-MAE) on the ConvNeXt V2 encoder.

encoder (sparse or dense backend) -> 1x1 projection to ``decoder_dim`` -> one mask token at the
masked positions -> one ConvNeXt V2 block shared by all tasks (as released; computed once, which
gives the same result as running it per task) or one block per task (as the paper describes) ->
pixel heads (1x1 conv to p*p*C, evaluated only at masked tokens unless full outputs are asked
for) and image heads (one shared LayerNorm, global average pool over all g*g positions, Linear).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..masking import check_mask, num_kept, random_patch_mask
from .. import args
from . import losses as loss_fns
from .backends import Plain
from ..tasks import (CLASS_TASKS, IMAGE_TASKS, PIXEL_CLASS_TASKS, PIXEL_TASKS, TASK_ORDER,  # noqa: F401 (re-exported)
                     TASK_SETS, check_targets, resolve_tasks)
from .convnextv2 import LN_EPS, Block, ConvNeXtV2Encoder


def check_mask_ratio(mask_ratio: float, grid: int, tasks) -> None:
    """A mask ratio that leaves the encoder nothing to see, or (with pixel tasks only, which learn on masked
    patches) nothing to predict, trains nothing: refused."""
    L = grid * grid
    kept = num_kept(L, mask_ratio)
    if kept == 0:
        raise ValueError(f"mask_ratio {mask_ratio} keeps no patch of the {grid}x{grid} grid (int({L} * (1 - "
                         f"mask_ratio)) = 0): the encoder would see nothing; use at most {1 - 1 / L:.4f}")
    if kept == L and not any(t in IMAGE_TASKS for t in tasks):
        raise ValueError(f"mask_ratio {mask_ratio} masks no patch of the {grid}x{grid} grid, and the tasks "
                         f"({', '.join(tasks)}) are pixel tasks, which learn on masked patches only: the objective "
                         f"is empty; use a ratio > 0 or add an image task")


class MPMAE(nn.Module):
    def __init__(self, size: str = "atto", img_size: int = 56, patch_size: int = 8, in_chans: int = 12,
                 tasks="all", decoder_dim: int = 512, decoder: str = "shared", mask_ratio: float = 0.6,
                 norm_pix_loss: bool = True, loss_weighting: str = "uncertainty", nodata: str = "zero",
                 backend: str = "sparse", grn_stats: str = "per_sample", impl: str = "auto", stem: str = "mmearth",
                 init: str = "mmearth"):
        super().__init__()
        args.choice("decoder", decoder, ("shared", "per_task"))
        args.choice("loss_weighting", loss_weighting, ("uncertainty", "unweighted"))
        args.choice("nodata", nodata, ("zero", "ignore"))
        args.choice("init", init, ("mmearth", "standard"))
        decoder_dim = args.positive_int("decoder_dim", decoder_dim, "a positive int (512 as released)")
        norm_pix_loss = args.flag("norm_pix_loss", norm_pix_loss)
        mask_ratio = args.real_in("mask_ratio", mask_ratio, 0.0, 1.0)
        self.tasks = resolve_tasks(tasks)
        self.encoder = ConvNeXtV2Encoder(size, in_chans=in_chans, img_size=img_size, patch_size=patch_size, stem=stem,
                                         backend=backend, grn_stats=grn_stats, impl=impl)
        self.patch_size, self.grid = self.encoder.patch_size, self.encoder.grid
        check_mask_ratio(mask_ratio, self.grid, self.tasks)
        self.mask_ratio, self.norm_pix_loss, self.loss_weighting, self.nodata = (mask_ratio, norm_pix_loss,
                                                                                  loss_weighting, nodata)
        self.decoder_mode = decoder
        self.proj = nn.Conv2d(self.encoder.out_channels, decoder_dim, 1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        if decoder == "shared":
            self.decoder = Block(decoder_dim)
        else:
            self.decoder = nn.ModuleDict({t: Block(decoder_dim) for t in self.tasks})
        p2 = self.patch_size * self.patch_size
        self.pixel_heads = nn.ModuleDict({t: nn.Conv2d(decoder_dim, p2 * PIXEL_TASKS[t], 1)
                                          for t in self.tasks if t in PIXEL_TASKS})
        self.image_norm = nn.LayerNorm(decoder_dim, eps=LN_EPS)
        self.image_heads = nn.ModuleDict({t: nn.Linear(decoder_dim, IMAGE_TASKS[t])
                                          for t in self.tasks if t in IMAGE_TASKS})
        # s_i of the uncertainty weighting (log variances), one per task, at 0.
        self.log_vars = nn.Parameter(torch.zeros(len(self.tasks)))
        self.init_weights(init)

    def init_weights(self, mode: str = "mmearth") -> None:
        """``"mmearth"`` as released (std 1.0 for depthwise kernels, encoder linears and every decoder-side
        Conv2d; std 0.02 for other convs and linears); ``"standard"``: std 0.02 everywhere. Mask token
        N(0, 0.02); GRN and the uncertainty weights at 0."""
        self.encoder.init_weights(mode)
        for m in [self.proj, self.decoder, self.pixel_heads, self.image_heads]:
            for mod in m.modules():
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    std = 1.0 if mode == "mmearth" and isinstance(mod, nn.Conv2d) else 0.02
                    nn.init.trunc_normal_(mod.weight, std=std)
                    nn.init.zeros_(mod.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    # -- forward -----------------------------------------------------------------------------
    def random_mask(self, batch: int, device=None, generator=None) -> tuple[torch.Tensor, int]:
        L = self.grid * self.grid
        return (random_patch_mask(batch, self.grid, self.mask_ratio, generator=generator, device=device),
                num_kept(L, self.mask_ratio))

    def decode(self, x: torch.Tensor, mask: torch.Tensor, kept: int | None) -> dict[str, torch.Tensor]:
        """Decoder features ``[B, D, g, g]`` per task (one shared tensor when the block is shared)."""
        z = self.proj(self.encoder(x, mask, kept))
        m = mask[:, None].to(z.dtype)
        h = z * (1 - m) + self.mask_token * m
        plain = Plain(self.encoder.impl)  # the decoder block: dense, nothing masked
        if self.decoder_mode == "shared":
            d = self.decoder(h, plain)
            return {t: d for t in self.tasks}
        return {t: self.decoder[t](h, plain) for t in self.tasks}

    def _masked_tokens(self, feats: torch.Tensor, mask: torch.Tensor, kept: int | None) -> torch.Tensor:
        """``[M, D]`` decoder features at the masked tokens, sample-major then raster order."""
        B, D = feats.shape[:2]
        flat = feats.flatten(2).transpose(1, 2)                       # [B, L, D]
        if kept is not None:  # static count of masked tokens: a gather, no sync
            L = flat.shape[1]
            idx = torch.argsort((~mask).flatten(1).to(torch.int8), dim=1, stable=True)[:, :L - kept]
            return flat.gather(1, idx[..., None].expand(-1, -1, D)).reshape(-1, D), idx
        return flat[mask.flatten(1)], None

    def _masked_targets(self, t: torch.Tensor, mask, idx) -> torch.Tensor:
        if idx is not None:
            return t.gather(1, idx[..., None].expand(-1, -1, t.shape[-1])).reshape(-1, t.shape[-1])
        return t[mask.flatten(1)]

    def forward(self, x: torch.Tensor, targets: dict[str, torch.Tensor], mask: torch.Tensor | None = None,
                kept: int | None = None, sync_counts=None) -> dict:
        """One pretraining step's forward.

        Args:
            x: encoder input ``[B, in_chans, img, img]`` (NaN-free).
            targets: per task, as ``train.data`` returns them: pixel regression ``[B, C, img, img]`` (NaN =
                no data), DW/ESA ``[B, img, img]`` int64 (-1 = no data), image regression ``[B, C]``,
                biome/ecoregion ``[B]`` int64 class index or ``[B, K]`` class weights (label distributions).
            mask: ``[B, g, g]`` (1 = masked); None draws FCMAE's random mask with ``mask_ratio``.
            sync_counts: data parallel only: maps this process's per-task element counts ``[T]`` to
                ``(counts summed over processes, number of processes)``. Each task loss is then
                ``world * local sum / global count``, so averaging gradients over processes (DDP) gives
                exactly the gradient of the global-batch mean; the returned losses are this process's
                share (their mean over processes is the global loss).
        Returns ``{"loss", "losses" (per task, detached-free tensors), "mask"}``.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        B = x.shape[0]
        if mask is None:
            mask, kept = self.random_mask(B, device=x.device)
        mask = check_mask(mask, B, self.grid, kept)  # once: the decoder and heads use it too
        check_targets(self.tasks, targets, B, self.encoder.img_size, x.device)
        feats = self.decode(x, mask, kept)
        p = self.patch_size
        parts = {}
        shared_tokens = None
        for t in self.tasks:
            f = feats[t]
            if t in PIXEL_TASKS:
                if shared_tokens is None or self.decoder_mode != "shared":
                    tokens, idx = self._masked_tokens(f, mask, kept)
                    shared_tokens = (tokens, idx)
                tokens, idx = shared_tokens
                head = self.pixel_heads[t]
                pred = F.linear(tokens, head.weight.flatten(1), head.bias)      # the 1x1 conv at masked tokens only
                tgt = targets[t]
                if t in PIXEL_CLASS_TASKS:
                    tgt = loss_fns.patchify(tgt[:, None].float(), p).long()
                    parts[t] = loss_fns.masked_pixel_ce_parts(pred, self._masked_targets(tgt, mask, idx),
                                                              PIXEL_TASKS[t])
                else:
                    tgt = self._masked_targets(loss_fns.patchify(tgt, p), mask, idx)
                    norm_pix = self.norm_pix_loss and t == "sentinel2"
                    parts[t] = loss_fns.masked_patch_mse_parts(pred, tgt, norm_pix, self.nodata)
            else:
                pooled = self.image_norm(f.permute(0, 2, 3, 1)).mean(dim=(1, 2))  # all g*g positions
                out = self.image_heads[t](pooled)
                parts[t] = (loss_fns.class_ce_parts(out, targets[t]) if t in CLASS_TASKS
                            else loss_fns.vector_mse_parts(out, targets[t]))
        totals = torch.stack([parts[t][0].float() for t in self.tasks])
        counts = torch.stack([parts[t][1] for t in self.tasks]).float()  # fp32 even under autocast: counts > 256
        world = 1
        if sync_counts is not None:
            counts, world = sync_counts(counts.detach())
        stacked = totals * world / counts.clamp_min(1)
        losses = dict(zip(self.tasks, stacked.unbind()))
        if self.loss_weighting == "uncertainty":
            loss = loss_fns.uncertainty_weighting(stacked, self.log_vars, active=counts > 0)
        else:
            loss = stacked.sum()
        return {"loss": loss, "losses": losses, "mask": mask}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor, kept: int | None = None) -> dict[str, torch.Tensor]:
        """Full pixel-head outputs ``[B, C, img, img]`` (all tokens; class tasks as argmax) for pictures."""
        feats = self.decode(x, mask, kept)
        out = {}
        for t, head in self.pixel_heads.items():
            y = head(feats[t]).flatten(2).transpose(1, 2)                      # [B, L, p*p*C]
            img = loss_fns.unpatchify(y, self.patch_size, PIXEL_TASKS[t])
            out[t] = img.argmax(1) if t in ("dynamic_world", "esa_worldcover") else img
        return out
