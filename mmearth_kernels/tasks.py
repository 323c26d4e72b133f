"""The MP-MAE pretext tasks: one table for the model, the data pipeline, the probe, the benchmark and the tests.

Each task is a modality the model reconstructs: ``level`` pixel (a head per masked patch) or image (one
vector per tile), ``outputs`` its channels (regression) or classes (classification). The order is
upstream's ``OUT_MODALITIES``, which is the order of the uncertainty weights.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    if isinstance(tasks, str):
        if tasks in TASK_SETS:
            return TASK_SETS[tasks]
        tasks = tuple(t.strip() for t in tasks.split(",") if t.strip())
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"unknown task(s) {unknown or list(tasks)}; use a set ({', '.join(TASK_SETS)}) or task names "
                         f"({', '.join(TASK_ORDER)})")
    return tuple(t for t in TASK_ORDER if t in tasks)
