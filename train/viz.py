"""Reconstruction pictures written by the trainer (``<out>/recon/step_*.png``)."""

from __future__ import annotations

import torch

from mmearth_kernels.models import MPMAE
from mmearth_kernels.tasks import PIXEL_CLASS_TASKS

from .files import write_atomically


def save_reconstruction(path: str, model: MPMAE, batch: dict, mask: torch.Tensor, kept) -> None:
    """One figure for the first sample: rows = S2 RGB and each pixel task; columns = masked input (grey =
    hidden), reconstruction (the prediction at masked patches, the visible input elsewhere, as MAE papers
    show it; the loss only ever sees the masked ones), target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    model.eval()
    rec = model.reconstruct(batch["input"][:1], mask[:1], kept)
    model.train()
    p = model.patch_size
    hidden = mask[0].repeat_interleave(p, 0).repeat_interleave(p, 1).cpu().numpy()
    fig, axes = plt.subplots(len(rec), 3, figsize=(7.5, 2.4 * len(rec)), squeeze=False)
    for r, task in enumerate(rec):
        tgt = batch[task][0].detach().float().cpu()
        pred = rec[task][0].detach().float().cpu()
        if task in PIXEL_CLASS_TASKS:
            t_img, p_img = tgt.numpy(), pred.numpy()
            kw = dict(cmap=plt.get_cmap("tab20").with_extremes(bad="0.6"), vmin=-1, vmax=11, interpolation="nearest")
        else:
            if task == "sentinel2":
                tgt, pred = tgt[[3, 2, 1]], pred[[3, 2, 1]]  # B4, B3, B2 = RGB
                # norm_pix: the prediction is per-patch standardised; show it with the target's patch stats
                tp = tgt.nan_to_num().unfold(1, p, p).unfold(2, p, p)
                mean, std = tp.mean(dim=(0, 3, 4), keepdim=True), tp.std(dim=(0, 3, 4), keepdim=True)
                pred = (pred.unfold(1, p, p).unfold(2, p, p) * std + mean).permute(0, 1, 3, 2, 4).reshape(tgt.shape)
            else:
                tgt, pred = tgt[:1], pred[:1]
            finite = tgt[torch.isfinite(tgt)]
            lo, hi = (torch.quantile(finite, 0.02), torch.quantile(finite, 0.98)) if finite.numel() else (0.0, 1.0)
            scale = lambda a: ((a.nan_to_num(float(lo)) - lo) / (hi - lo + 1e-6)).clamp(0, 1)  # noqa: E731
            t_img, p_img = scale(tgt), scale(pred)
            t_img = t_img.permute(1, 2, 0).numpy() if t_img.shape[0] == 3 else t_img[0].numpy()
            p_img = p_img.permute(1, 2, 0).numpy() if p_img.shape[0] == 3 else p_img[0].numpy()
            kw = dict(cmap=plt.get_cmap("viridis").with_extremes(bad="0.6"))
        recon = np.where(hidden[..., None] if t_img.ndim == 3 else hidden, p_img, t_img)
        if t_img.ndim == 3:
            masked = np.where(hidden[..., None], 0.6, t_img)
        else:
            masked = np.ma.masked_array(t_img, mask=hidden)
        for c, (img, title) in enumerate(((masked, "masked input"), (recon, "reconstruction"), (t_img, "target"))):
            axes[r, c].imshow(img, **kw)
            axes[r, c].set_title(f"{task}: {title}", fontsize=7)
            axes[r, c].axis("off")
    fig.tight_layout()
    try:
        write_atomically(path, lambda f: fig.savefig(f, dpi=80, format="png"))
    finally:
        plt.close(fig)
