"""The MP-MAE pretext tasks: one table for the model, the data pipeline, the probe, the benchmark and the tests.

Each task is a modality the model reconstructs: ``level`` pixel (a head per masked patch) or image (one
vector per tile), ``outputs`` its channels (regression) or classes (classification). The order is
upstream's ``OUT_MODALITIES``, which is the order of the uncertainty weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .host_sync import host_only


@dataclass(frozen=True)
class Task:
    name: str
    level: str     # "pixel" or "image"
    outputs: int   # regressed channels, or classes
    classes: bool  # cross-entropy over `outputs` classes (-1 = no data) instead of MSE


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("sentinel2", "pixel", 12, False),
    Task("sentinel1", "pixel", 8, False),
    Task("aster", "pixel", 2, False),
    Task("era5", "image", 12, False),
    Task("dynamic_world", "pixel", 9, True),
    Task("canopy_height_eth", "pixel", 2, False),
    Task("lat", "image", 2, False),
    Task("lon", "image", 2, False),
    Task("biome", "image", 14, True),
    Task("eco_region", "image", 846, True),
    Task("month", "image", 2, False),
    Task("esa_worldcover", "pixel", 11, True),
]}

TASK_ORDER = tuple(TASKS)
PIXEL_TASKS = {n: t.outputs for n, t in TASKS.items() if t.level == "pixel"}   # name -> channels or classes
IMAGE_TASKS = {n: t.outputs for n, t in TASKS.items() if t.level == "image"}
CLASS_TASKS = tuple(n for n, t in TASKS.items() if t.classes)
PIXEL_CLASS_TASKS = tuple(n for n in CLASS_TASKS if n in PIXEL_TASKS)          # per-pixel labels (DW, ESA)
TASK_SETS = {
    "all": TASK_ORDER,
    "s2": ("sentinel2",),
    "pixel": tuple(PIXEL_TASKS),
    "image": tuple(IMAGE_TASKS),
}


def resolve_tasks(tasks) -> tuple[str, ...]:
    """A set name (all, s2, pixel, image), a comma-separated string or a list of names -> names in task order."""
    hint = f"use a set ({', '.join(TASK_SETS)}) or task names ({', '.join(TASK_ORDER)})"
    if isinstance(tasks, str):
        if tasks in TASK_SETS:
            return TASK_SETS[tasks]
        tasks = tuple(t.strip() for t in tasks.split(",") if t.strip())
    elif isinstance(tasks, (list, tuple, set, frozenset)):
        tasks = tuple(tasks)
    else:
        raise TypeError(f"tasks must be a set name, a comma-separated string or a list of task names, got {tasks!r}; "
                        f"{hint}")
    if not tasks:
        raise ValueError(f"no task given; {hint}")
    unknown = [t for t in tasks if not isinstance(t, str) or t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; {hint}")
    return tuple(t for t in TASK_ORDER if t in tasks)


def target_shape(task: str, batch: int, img: int, one_hot: bool = False) -> list[int]:
    """What a task's target looks like: pixel regression ``[B, C, img, img]``, DW/ESA ``[B, img, img]`` class
    indices, image regression ``[B, C]``, biome/ecoregion ``[B]`` class indices or, with ``one_hot``, rows
    ``[B, K]`` of class weights (the file's one-hot rows, or the label distributions ``train.data`` returns)."""
    t = TASKS[task]
    if t.level == "pixel":
        return [batch, img, img] if t.classes else [batch, t.outputs, img, img]
    return [batch, t.outputs] if one_hot or not t.classes else [batch]


def check_targets(tasks, targets, batch: int, img: int, device) -> None:
    """Every task's target is there with its shape and dtype, naming the task; class ranges on CPU (on a GPU
    that would be a host sync)."""
    if not isinstance(targets, dict):
        raise TypeError(f"targets must be a dict task -> tensor, got {type(targets).__name__}")
    missing = [t for t in tasks if t not in targets]
    if missing:
        raise ValueError(f"targets lack task(s) {missing}")
    for name in tasks:
        v, t = targets[name], TASKS[name]
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"target {name!r} must be a torch.Tensor, got {type(v).__name__}")
        if v.device != device:
            raise ValueError(f"target {name!r} is on {v.device} but x is on {device}")
        one_hot = bool(t.classes) and t.level == "image" and v.dim() == 2  # [B, classes] rows instead of indices
        want = target_shape(name, batch, img, one_hot=one_hot)
        if list(v.shape) != want:
            raise ValueError(f"target {name!r} must be {want} for this model (batch {batch}, {img} px), "
                             f"got {list(v.shape)}")
        if t.classes and not one_hot and (v.dtype.is_floating_point or v.dtype.is_complex):
            raise TypeError(f"target {name!r} must hold integer class indices (-1 = no data), got {v.dtype}")
        if one_hot and v.dtype.is_complex:
            raise TypeError(f"target {name!r} rows must be real class weights (one-hot rows or label distributions), "
                            f"got {v.dtype}")
        if one_hot and device.type == "cpu" and v.numel() and not torch.compiler.is_compiling():
            with host_only("class-weight check: CPU targets only"):
                bad = bool((~torch.isfinite(v.float()) | (v < 0)).any()) if v.dtype != torch.bool else False
            if bad:
                raise ValueError(f"target {name!r} rows must be non-negative, finite class weights (one-hot rows or "
                                 f"label distributions)")
        if not t.classes and not v.dtype.is_floating_point:
            raise TypeError(f"target {name!r} must be floating point (NaN = no data), got {v.dtype}")
        if t.classes and not one_hot and device.type == "cpu" and v.numel() and not torch.compiler.is_compiling():
            with host_only("class-range check: CPU targets only"):
                lo, hi = int(v.min()), int(v.max())
            if lo < -1 or hi >= t.outputs:
                raise ValueError(f"target {name!r} holds class {lo if lo < -1 else hi}; classes are 0..{t.outputs - 1} "
                                 f"and -1 (no data)")
