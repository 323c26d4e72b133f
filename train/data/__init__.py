"""MMEarth data: the HDF5 reader, the no-data policy, crops, a synthetic generator, a fast cache.

    from train.data import MMEarthDataset
    ds = MMEarthDataset("data/data_1M_v001_64", split="train", crop=56)
    sample = ds[0]          # dict of tensors, see MMEarthDataset
"""

from .modalities import MODALITIES, PIXEL_TASKS, IMAGE_TASKS, Modality
from .reader import DataError, MMEarthDataset, normalize_batch

__all__ = ["DataError", "IMAGE_TASKS", "MMEarthDataset", "MODALITIES", "Modality", "PIXEL_TASKS", "normalize_batch"]
