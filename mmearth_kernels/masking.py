"""FCMAE random patch masks (1 = masked, 0 = kept), with a fixed number of kept patches per sample."""

import numbers

import torch

from . import args
from .host_sync import host_only


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches kept per sample, as FCMAE computes it: ``int(L * (1 - ratio))`` (truncation).

    At L = 49 and ratio 0.6 this keeps 19 patches, so 61.2 % are masked, not 60 %.
    """
    num_patches = args.int_at_least("num_patches", num_patches, 0)
    if not _is_number(mask_ratio) or not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio!r}")
    return int(num_patches * (1 - mask_ratio))


def _is_number(v) -> bool:
    return not isinstance(v, bool) and type(v).__name__ not in ("bool", "bool_") and isinstance(v, numbers.Real)


def random_patch_mask(batch_size: int, grid: int | tuple[int, int], mask_ratio: float, *,
                      generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A [B, gh, gw] bool mask (True = masked) keeping exactly ``num_kept`` patches per sample.

    Kept patches are the smallest of per-sample uniform noise, as in FCMAE (argsort of noise).
    """
    batch_size = args.int_at_least("batch_size", batch_size, 0)
    gh, gw = _grid(grid)
    L = gh * gw
    keep = num_kept(L, mask_ratio)
    noise = torch.rand(batch_size, L, generator=generator, device=device)
    order = noise.argsort(dim=1)
    mask = torch.ones(batch_size, L, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :keep], False)
    return mask.view(batch_size, gh, gw)


def _grid(grid) -> tuple[int, int]:
    """``g`` or ``(gh, gw)``: positive ints."""
    if isinstance(grid, (tuple, list)) and len(grid) == 2:
        return args.positive_int("grid[0]", grid[0]), args.positive_int("grid[1]", grid[1])
    g = args.positive_int("grid", grid, "a positive int or a pair of them (the mask grid)")
    return g, g


def check_mask(mask, batch: int, grid: int, kept: int | None) -> torch.Tensor:
    """The one validation of a patch mask: ``[batch, grid, grid]``, bool or integer 0/1 (1 = masked);
    returns it as bool. On CPU the values are checked too (integers other than 0/1, and with ``kept``
    given, a sample that does not keep exactly ``kept`` patches); on a GPU that would be a host sync,
    so there both are the caller's promise (``random_patch_mask`` and the trainer keep it)."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor [B, g, g] (1 = masked), got {type(mask).__name__}")
    if mask.dim() != 3 or tuple(mask.shape) != (batch, grid, grid):
        raise ValueError(f"mask must be [B, {grid}, {grid}] = {[batch, grid, grid]} (img_size / patch_size = {grid}), "
                         f"got {list(mask.shape)}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise TypeError(f"mask must be bool or integer 0/1 (1 = masked), got {mask.dtype}")
    if kept is not None and (isinstance(kept, bool) or not isinstance(kept, int) or not 0 <= kept <= grid * grid):
        raise ValueError(f"kept must be an int in [0, {grid * grid}] (patches kept per sample) or None, got {kept!r}")
    if mask.device.type == "cpu" and not torch.compiler.is_compiling():
        with host_only("mask check: CPU masks only"):
            if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
                raise ValueError(f"mask must hold only 0 and 1 (1 = masked), got the values "
                                 f"{torch.unique(mask).tolist()[:8]}")
    mask = mask if mask.dtype == torch.bool else mask != 0
    check_kept(mask, kept, "kept")
    return mask


def check_kept(mask: torch.Tensor, kept: int | None, name: str) -> None:
    """That every sample of the bool ``mask`` keeps exactly ``kept`` patches: on CPU masks only (on a GPU
    the read would be a host sync, so there it is the caller's promise); ``name`` is the argument's."""
    if kept is None or mask.device.type != "cpu" or torch.compiler.is_compiling() or not mask.shape[0]:
        return
    with host_only(f"{name} check: CPU masks only"):
        counts = (~mask).flatten(1).sum(1)
        wrong = (counts != kept).nonzero()
        if wrong.numel():
            b = int(wrong[0, 0])
            raise ValueError(f"{name}={kept} but sample {b} of the mask keeps {int(counts[b])} patches; pass "
                             f"{name}=None for masks whose samples keep different numbers")
