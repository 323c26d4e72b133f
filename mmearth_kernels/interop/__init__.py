"""Weights in and out of the encoder: released MMEarth / FCMAE checkpoints, the upstream dense layout, timm.

    from mmearth_kernels.interop import export_dense, load_sparse_checkpoint, load_timm
    load_sparse_checkpoint(enc, "checkpoint-199.pth")     # a released sparse (MinkowskiEngine) checkpoint
    sd = export_dense(enc, "timm")                         # timm.create_model("convnextv2_atto", ...) loads it
    load_timm(enc, "convnextv2_atto.safetensors")          # timm's weights into our encoder (original stem)

Files are read with ``weights_only=True`` and one allowlisted global (:mod:`.files`). This package imports
nothing from :mod:`mmearth_kernels.models` at run time (the MinkowskiEngine backend uses :mod:`.me_layout`).
"""

from __future__ import annotations

from .files import ALLOWED_GLOBALS, UnsafeCheckpointError, load_file, save_file, state_dict_of
from .mmearth_format import export_mmearth, load_sparse_checkpoint
from .timm_format import CONV_MLP_SIZES, adapt_stem, export_timm, load_timm

LAYOUTS = ("mmearth", "timm")

__all__ = ["ALLOWED_GLOBALS", "CONV_MLP_SIZES", "LAYOUTS", "UnsafeCheckpointError", "adapt_stem", "export_dense",
           "export_mmearth", "export_timm", "load_file", "load_sparse_checkpoint", "load_timm", "save_file",
           "state_dict_of"]


def export_dense(encoder, layout: str = "mmearth", **kwargs) -> dict:
    """The encoder as a dense ConvNeXt V2 state dict: ``"mmearth"`` (:func:`export_mmearth`, the upstream
    fine-tuning model) or ``"timm"`` (:func:`export_timm`; keyword arguments go there)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return export_timm(encoder, **kwargs) if layout == "timm" else export_mmearth(encoder, **kwargs)
