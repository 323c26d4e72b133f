"""Reading and writing weight files safely: ``torch.load(weights_only=True)`` with one explicit allowlist,
and ``.safetensors`` (the format timm and the hub use).

Nothing in a file is ever executed. Upstream MMEarth (and FCMAE, DeiT, ...) ``save_model`` writes
``{"model", "optimizer", "epoch", "scaler", "args": argparse.Namespace}``; the Namespace is the one global
allowlisted here (it only holds the run's options). A file pickling any other class or function is refused
with an error that names it and the file; ``weights_only`` is never turned off.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile

import torch

from ..files import atomic_file

# Globals a released checkpoint may pickle besides tensors and plain containers, and why each is safe.
ALLOWED_GLOBALS = {
    argparse.Namespace: "the `args` of upstream's save_model: a plain record of the run's options",
}


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A weights file pickles a class or function outside :data:`ALLOWED_GLOBALS`."""


def load_file(path) -> dict:
    """The object stored in a ``.pth``/``.pt``/``.bin`` (torch zip) or ``.safetensors`` file, loaded safely."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no weights file at {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file as load_safetensors

        try:
            return load_safetensors(path, device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError on a damaged header
            raise ValueError(f"{path} is not a readable .safetensors file: {e}") from None
    if not zipfile.is_zipfile(path):  # every torch.save since 1.6 writes a zip archive
        raise ValueError(f"{path} is not a PyTorch checkpoint (torch.save zip) or a .safetensors file")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_GLOBALS)):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        name = found.group(1) if found else str(e).strip().splitlines()[-1]
        allowed = ", ".join(f"{g.__module__}.{g.__qualname__}" for g in ALLOWED_GLOBALS)
        raise UnsafeCheckpointError(
            f"{path}: refused: the file pickles {name}, which safe loading does not allow (weights_only=True; "
            f"allowlisted: {allowed}). Re-save its tensors with torch.save(state_dict) if you trust the file") from None
    return obj


def state_dict_of(checkpoint, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model weights of a path or a loaded checkpoint: ``{"model": ...}`` (upstream's save_model),
    ``{"state_dict": ...}`` or a bare state dict."""
    if isinstance(checkpoint, (str, bytes)) or hasattr(checkpoint, "__fspath__"):
        checkpoint = load_file(checkpoint)
    if not isinstance(checkpoint, dict):
        raise TypeError(f"{what} must be a path or a state_dict, got {type(checkpoint).__name__}")
    for key in ("model", "state_dict"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            checkpoint = checkpoint[key]
    return checkpoint


def save_file(state: dict[str, torch.Tensor], path: str, metadata: dict[str, str] | None = None) -> None:
    """Write a state dict as ``.safetensors`` (by the name) or with ``torch.save``; never over an existing
    file, and complete or not at all (a temporary beside it, renamed when written, with the umask's permissions:
    :func:`mmearth_kernels.files.atomic_file`)."""
    if os.path.exists(path):
        raise FileExistsError(f"{path} exists; not overwriting it")
    with atomic_file(path) as tmp:
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file as save_safetensors

            save_safetensors({k: v.contiguous() for k, v in state.items()}, tmp, metadata=metadata)
        else:
            torch.save({"model": state, "meta": metadata or {}}, tmp)
