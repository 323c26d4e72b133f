"""FCMAE random patch masks (1 = masked, 0 = kept), with a fixed number of kept patches per sample."""

import torch


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches kept per sample, as FCMAE computes it: ``int(L * (1 - ratio))`` (truncation).

    At L = 49 and ratio 0.6 this keeps 19 patches, so 61.2 % are masked, not 60 %.
    """
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    return int(num_patches * (1 - mask_ratio))


def random_patch_mask(batch_size: int, grid: int | tuple[int, int], mask_ratio: float, *,
                      generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A [B, gh, gw] bool mask (True = masked) keeping exactly ``num_kept`` patches per sample.

    Kept patches are the smallest of per-sample uniform noise, as in FCMAE (argsort of noise).
    """
    gh, gw = (grid, grid) if isinstance(grid, int) else grid
    L = gh * gw
    keep = num_kept(L, mask_ratio)
    noise = torch.rand(batch_size, L, generator=generator, device=device)
    order = noise.argsort(dim=1)
    mask = torch.ones(batch_size, L, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :keep], False)
    return mask.view(batch_size, gh, gw)
