"""What the MMEarth v001 files hold: one row per tile in every dataset, in this layout.

Facts from the MMEarth data pipeline: dataset names, channel order, stored dtype, no-data value, and how
each modality becomes a training tensor. The model's view of each (outputs, classes) is mmearth_kernels.tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmearth_kernels.tasks import TASKS

# Sentinel-2 bands in file order. B8A comes before B8; B10 (cirrus) is not used for training.
S2_BANDS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8A", "B8", "B9", "B10", "B11", "B12")
S2_USED = tuple(i for i, b in enumerate(S2_BANDS) if b != "B10")  # 12 bands, increasing (h5py needs that)
S1_BANDS = ("asc_VV", "asc_VH", "asc_HH", "asc_HV", "desc_VV", "desc_VH", "desc_HH", "desc_HV")

# Dynamic World labels are stored +1 (0 = no data); ESA WorldCover codes 10..100 map to 0..10. The class
# counts are the model's (one task table: mmearth_kernels.tasks).
DW_CLASSES = TASKS["dynamic_world"].outputs
ESA_CODES = (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
BIOMES = TASKS["biome"].outputs
ECOREGIONS = TASKS["eco_region"].outputs
assert len(ESA_CODES) == TASKS["esa_worldcover"].outputs


@dataclass(frozen=True)
class Modality:
    name: str            # HDF5 dataset name
    level: str           # "pixel" (N, C, H, W) or "image" (N, C)
    channels: int        # channels in the file
    dtype: np.dtype      # stored dtype
    kind: str            # "continuous" (z-scored), "classes" (per-pixel labels), "onehot" (-> class index)
    no_data: tuple       # stored values meaning "no data" (besides NaN/inf for floats)
    stats_key: str | None = None  # key in <stem>_band_stats.json (S2: picked per tile, l1c/l2a)
    also_accepted: tuple = ()     # other stored dtypes read as this modality (cast to float32 when normalised)

    def accepts(self, dtype) -> bool:
        return dtype == self.dtype or dtype in self.also_accepted


# ASTER is int16 and canopy height int8, so upstream's -inf / 255 cannot be stored there; we use
# the most negative value of the type (documented in the README's no-data policy).
MODALITIES: dict[str, Modality] = {m.name: m for m in [
    Modality("sentinel2", "pixel", 13, np.dtype("uint16"), "continuous", (0,), "sentinel2"),
    Modality("sentinel1", "pixel", 8, np.dtype("float32"), "continuous", (), "sentinel1"),
    Modality("aster", "pixel", 2, np.dtype("int16"), "continuous", (-32768,), "aster"),
    Modality("canopy_height_eth", "pixel", 2, np.dtype("int8"), "continuous", (-128,), "canopy_height_eth"),
    Modality("dynamic_world", "pixel", 1, np.dtype("uint8"), "classes", (0,)),
    Modality("esa_worldcover", "pixel", 1, np.dtype("uint8"), "classes", (0, 255)),
    Modality("era5", "image", 12, np.dtype("float32"), "continuous", (), "era5"),
    Modality("lat", "image", 2, np.dtype("float32"), "continuous", (), "lat"),
    Modality("lon", "image", 2, np.dtype("float32"), "continuous", (), "lon"),
    # torchgeo's MMEarth test files store month as int32 (real files: float32): accepted and cast, as it reads them
    Modality("month", "image", 2, np.dtype("float32"), "continuous", (), "month",
             (np.dtype("int32"), np.dtype("int64"))),
    Modality("biome", "image", BIOMES, np.dtype("uint8"), "onehot", (255,)),
    Modality("eco_region", "image", ECOREGIONS, np.dtype("uint16"), "onehot", (65535,)),
]}

# Sentinel-2 quality layers the real files carry but training does not use (torchgeo's MMEarth reads them by
# default): QA60 cloud bits, MSK_CLDPRB cloud probability and the scene classification, 1 channel each; the
# last two exist for L2A only, so L1C tiles hold the no-data value.
S2_QUALITY: dict[str, Modality] = {m.name: m for m in [
    Modality("sentinel2_cloudmask", "pixel", 1, np.dtype("uint16"), "mask", (65535,)),
    Modality("sentinel2_cloudprod", "pixel", 1, np.dtype("uint16"), "mask", (65535,)),
    Modality("sentinel2_scl", "pixel", 1, np.dtype("uint8"), "mask", (255,)),
]}

PIXEL_TASKS = tuple(n for n, m in MODALITIES.items() if m.level == "pixel")
IMAGE_TASKS = tuple(n for n, m in MODALITIES.items() if m.level == "image")
METADATA_DTYPE = np.dtype([("tile_id", "S100"), ("S2_type", "S10")])  # as the real files; torchgeo's test files
# name the first field meta_id. Upstream and torchgeo read the tile id as the row's first field: so do we when
# there is no field called tile_id (tile_id_field).


def tile_id_field(dtype: np.dtype) -> str | None:
    """The metadata field holding the tile id: ``tile_id`` when present, else the first field."""
    names = dtype.names or ()
    return "tile_id" if "tile_id" in names else (names[0] if names else None)


def used_channels(name: str) -> tuple[int, ...]:
    """Indices read from the file (increasing): all channels, except S2 without B10."""
    return S2_USED if name == "sentinel2" else tuple(range(MODALITIES[name].channels))


def dw_lookup() -> np.ndarray:
    """Stored Dynamic World value -> class index (0..8), -1 for no data (stored 0) and unknown values."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[1:DW_CLASSES + 1] = np.arange(DW_CLASSES)
    return lut


def esa_lookup() -> np.ndarray:
    """Stored ESA WorldCover code -> class index (0..10); 0, 255 and unknown codes -> -1.

    No-data is decided on the *stored* code, before remapping, so class 0 (tree cover, code 10)
    survives (upstream's 2026 code marks it no-data after the remap and loses it).
    """
    lut = np.full(256, -1, dtype=np.int64)
    for i, code in enumerate(ESA_CODES):
        lut[code] = i
    return lut


ALL_TASKS = tuple(MODALITIES)


class DataError(ValueError):
    """A problem with an MMEarth file: the message names the file and the modality."""
