"""Models: the ConvNeXt V2 encoder with swappable backends (dense / sparse)."""

from .convnextv2 import SIZES, ConvNeXtV2Encoder, encoder

__all__ = ["SIZES", "ConvNeXtV2Encoder", "encoder"]
