"""MP-MAE losses (MMEarth §2.4), each safe for an all-masked sample or a constant patch (no NaN).

Pixel tasks are computed on masked patches only: regression as a per-patch MSE averaged over the
masked patches with a non-zero loss (S2 with per-patch normalisation, ``norm_pix``), per-pixel
cross-entropy for Dynamic World / ESA WorldCover (target -1 ignored). Image tasks use every sample:
MSE with NaN targets dropped (ERA5, lat, lon, month), cross-entropy for biome / ecoregion (hard labels, or soft
targets: label distributions).

Every loss is a mean ``sum / count``; the ``*_parts`` functions return the two separately so that a
data-parallel run can divide by the count summed over all processes (then the averaged gradient equals
a one-process step on the global batch, even when no-data makes per-process counts differ).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patchify(t: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, g*p, g*p]`` -> ``[B, g*g, p*p*C]``, ordered (row in patch, column in patch, channel)."""
    B, C, H, W = t.shape
    g = H // p
    return t.reshape(B, C, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(B, g * g, p * p * C)


def unpatchify(x: torch.Tensor, p: int, C: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, g*g, p*p*C]`` -> ``[B, C, g*p, g*p]``."""
    B, L, _ = x.shape
    g = int(round(L ** 0.5))
    return x.reshape(B, g, g, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, g * p, g * p)


def _safe_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    return total / count.clamp_min(1)


def masked_patch_mse(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool = False, nodata: str = "zero"
                     ) -> torch.Tensor:
    """The mean: see :func:`masked_patch_mse_parts`."""
    return _safe_mean(*masked_patch_mse_parts(pred, target, norm_pix, nodata))


def masked_patch_mse_parts(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool = False, nodata: str = "zero"
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE over masked patches as ``(sum, count)``; ``pred``, ``target`` ``[M, p*p*C]`` (the batch's M masked
    patches).

    ``nodata="zero"`` (as released): NaN targets become 0 and are trained on. ``"ignore"``: NaN
    elements are left out of every mean. ``norm_pix``: each target patch is standardised by its own
    mean and unbiased variance over all p*p*C values, ``(t - mean) / sqrt(var + 1e-6)``.
    """
    valid = torch.isfinite(target)
    if nodata == "zero":
        target, valid = torch.nan_to_num(target, nan=0.0, posinf=0.0, neginf=0.0), torch.ones_like(valid)
    elif nodata != "ignore":
        raise ValueError(f"nodata must be 'zero' or 'ignore', got {nodata!r}")
    else:
        target = torch.where(valid, target, torch.zeros_like(target))
    v = valid.to(pred.dtype)
    if norm_pix:
        n = v.sum(-1, keepdim=True)
        mean = _safe_mean((target * v).sum(-1, keepdim=True), n)
        var = _safe_mean(((target - mean) ** 2 * v).sum(-1, keepdim=True), n - 1)  # unbiased, as torch.var
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = _safe_mean(((pred - target) ** 2 * v).sum(-1), v.sum(-1))
    # average over masked patches whose loss is non-zero (upstream counts count_nonzero(loss * mask))
    return per_patch.sum(), (per_patch != 0).sum()


def masked_pixel_ce(logits: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """The mean: see :func:`masked_pixel_ce_parts`."""
    return _safe_mean(*masked_pixel_ce_parts(logits, target, classes))


def masked_pixel_ce_parts(logits: torch.Tensor, target: torch.Tensor, classes: int):
    """``(sum, count)`` of the per-pixel cross-entropy on masked patches; ``logits`` ``[M, p*p*K]``,
    ``target`` ``[M, p*p]``, -1 ignored."""
    logits = logits.reshape(-1, classes)
    target = target.reshape(-1)
    keep = target >= 0
    loss = F.cross_entropy(logits, target.clamp_min(0), reduction="none")
    return (loss * keep).sum(), keep.sum()


def vector_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean: see :func:`vector_mse_parts`."""
    return _safe_mean(*vector_mse_parts(pred, target))


def vector_mse_parts(pred: torch.Tensor, target: torch.Tensor):
    """``(sum, count)`` of the squared error over the non-NaN target elements (ERA5, lat, lon, month)."""
    keep = torch.isfinite(target)
    err = torch.where(keep, pred - torch.nan_to_num(target), torch.zeros_like(pred))
    return (err ** 2).sum(), keep.sum()


def class_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean: see :func:`class_ce_parts`."""
    return _safe_mean(*class_ce_parts(logits, target))


def class_ce_parts(logits: torch.Tensor, target: torch.Tensor):
    """``(sum, count)`` of the cross-entropy for biome / ecoregion from a class index ``[B]`` (-1 ignored) or
    from rows ``[B, K]`` of non-negative class weights (the file's one-hot rows, or label distributions): each
    row, divided by its sum, is a soft target (a one-hot row gives exactly the hard-label loss; a row marking
    several classes spreads the target over them); an all-zero row is ignored."""
    if target.dim() == logits.dim():
        w = target.float()
        total = w.sum(dim=-1, keepdim=True)
        keep = total[..., 0] > 0
        soft = torch.where(total > 0, w / total.clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(w))
        loss = F.cross_entropy(logits.float(), soft, reduction="none")
        return (loss * keep).sum(), keep.sum()
    keep = target >= 0
    loss = F.cross_entropy(logits, target.clamp_min(0), reduction="none")
    return (loss * keep).sum(), keep.sum()


def uncertainty_weighting(losses: torch.Tensor, log_vars: torch.Tensor, active: torch.Tensor | None = None
                          ) -> torch.Tensor:
    """``sum_i exp(-s_i) L_i + s_i`` (Kendall et al. without the 1/2 factors, as released); a task whose
    loss is exactly 0 contributes nothing (upstream's test; ``active`` overrides it: MP-MAE passes "the
    global element count is non-zero", which is the same thing on one process, and stays the same on
    every rank when one rank's batch happens to hold no valid element of a task)."""
    terms = torch.exp(-log_vars) * losses + log_vars
    return torch.where(losses != 0 if active is None else active, terms, torch.zeros_like(terms)).sum()
