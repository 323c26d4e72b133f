"""Representation health: is the encoder collapsing? A label-free check on a fixed held batch.

Every few logging points the encoder encodes the same held images with the same mask (no gradient), each image's
last-stage features are pooled over its visible positions (``[N, D]``), and two numbers are logged:

* ``health_std``: the per-channel standard deviation of the L2-normalised embeddings, averaged over channels
  and multiplied by sqrt(D) (SimSiam, Chen & He 2021, section 4.1): about 1 for well-spread (isotropic) features,
  0 when every image maps to the same vector; ``health_std_min`` the smallest channel's (dead channels);
* ``health_rank``: the effective rank (RankMe, Garrido et al. 2023): exp of the entropy of the normalised singular
  values of the embedding matrix, between 1 (collapsed) and min(N, D).

ConvNeXt V2 introduced GRN against exactly this kind of feature collapse in FCMAE pretraining, so a broken GRN
kernel would plausibly show here first. A warning is printed when the rank falls below 5 % of min(N, D) or the
normalised std below 0.1: compare runs of the same recipe, not absolute values (RankMe's own advice).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def held_batch(ds, batches, model, samples: int, seed: int) -> dict:
    """The first ``samples`` images of the dataset's split (deterministic, and not taken from the training
    iterator: the run's data order is unchanged), on the device and normalised as the training batches are, with
    masks from their own fixed seed."""
    n = min(samples, len(ds))
    batch = batches.to_device(ds.read_batch(list(range(n))))
    mask, _ = model.random_mask(n, generator=torch.Generator().manual_seed(seed + 7919))
    return {"input": batch["input"], "mask": mask.to(batch["input"].device)}


@torch.no_grad()
def pooled_features(encoder, x: torch.Tensor, mask: torch.Tensor, kept: int, batch: int) -> torch.Tensor:
    """``[N, D]``: each image's last-stage features averaged over its visible positions (fp32)."""
    out = []
    for i in range(0, x.shape[0], batch):
        f = encoder(x[i:i + batch], mask[i:i + batch], kept).float()        # [b, D, g, g], 0 at masked positions
        visible = (~mask[i:i + batch]).flatten(1).sum(1).clamp_min(1)[:, None]
        out.append(f.flatten(2).sum(-1) / visible)
    return torch.cat(out)


def health_metrics(z: torch.Tensor) -> dict:
    """The collapse metrics of embeddings ``z`` ``[N, D]`` (see the module docstring)."""
    z = z.double()
    n, d = z.shape
    if not bool(torch.isfinite(z).all()):  # diverged weights: nothing to measure, and the warning says so
        return {"health_std": float("nan"), "health_std_min": float("nan"), "health_rank": float("nan"),
                "health_rank_max": min(n, d)}
    zn = F.normalize(z, dim=1)
    std = zn.std(dim=0) * d ** 0.5 if n > 1 else torch.zeros(d, dtype=z.dtype)
    s = torch.linalg.svdvals(z)
    p = s / s.sum().clamp_min(1e-30) + 1e-7
    rank = float(torch.exp(-(p * p.log()).sum())) if float(s.sum()) > 0 else 1.0
    return {"health_std": float(std.mean()), "health_std_min": float(std.min()), "health_rank": rank,
            "health_rank_max": min(n, d)}


def collapse_warning(h: dict) -> str | None:
    if h["health_rank"] != h["health_rank"]:
        return "representation health: the encoder's features on the held batch are not finite (diverged weights?)"
    low_rank = h["health_rank"] < 0.05 * h["health_rank_max"]
    if low_rank or h["health_std"] < 0.1:
        return (f"representation health: effective rank {h['health_rank']:.1f} of at most {h['health_rank_max']}, "
                f"normalised channel std {h['health_std']:.3f} (about 1 when healthy): the encoder's features may be "
                f"collapsing")
    return None
