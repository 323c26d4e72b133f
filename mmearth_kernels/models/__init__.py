"""Models: the ConvNeXt V2 encoder with swappable backends (dense / sparse) and the MP-MAE."""

from .convnextv2 import SIZES, ConvNeXtV2Encoder, encoder
from .mpmae import MPMAE, TASK_ORDER, TASK_SETS

__all__ = ["MPMAE", "SIZES", "TASK_ORDER", "TASK_SETS", "ConvNeXtV2Encoder", "encoder"]
