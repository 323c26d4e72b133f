"""The encoder backends, each declared once (:func:`register_backend` of a :class:`BackendSpec`, next to its class
in :mod:`.backends`), and everything derived from them: the encoder's ``backend=`` choices (:data:`BACKENDS`), the
trainer's ``--backend`` choices and help, the end-to-end benchmark's names and baselines, ``python -m
mmearth_kernels.info`` and the generated backend-parity tests. No other list of backend names exists.

Importing this module imports :mod:`mmearth_kernels.models` first, whose encoder imports :mod:`.backends`: the table
is complete by the time anyone reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class BackendSpec:
    """An encoder backend.

    ``factory(encoder, x, mask, kept)`` makes the per-forward backend object. ``summary``: one line (CLI help);
    ``runs`` / ``use``: what it runs and when to use it (docs). ``needs``: what it needs beyond PyTorch;
    ``why_unavailable(device)``: None where it runs, else why not. ``exact``: computes FCMAE's masked function, the
    same outputs and gradients as the reference backend (the parity tests hold it to that). ``kernels``: runs this
    library's ops, so ``impl=`` chooses their kernels (the e2e benchmark's ``<name>-<impl>``). ``slow``: a
    correctness reference, not a fast path (the tests run it on a small model, marked slow). ``all_sites``: it
    computes on every site, masked ones too (the dense backends: their executed FLOPs are the full map's). One
    backend is the ``default``, one the ``reference`` (exact, nothing compiled: the parity oracle); ``baseline``:
    what the e2e benchmark divides by (in the same execution mode). ``reproducible``: the same input gives bit-equal
    outputs call after call on the CPU (MinkowskiEngine's does not: it hashes coordinates, so its site order, and with
    it the rounding of every sum over sites, changes from call to call).
    """

    name: str
    factory: Callable
    summary: str
    runs: str
    use: str
    needs: str = "nothing beyond PyTorch"
    why_unavailable: Callable = lambda device: None
    exact: bool = True
    kernels: bool = False
    slow: bool = False
    all_sites: bool = False
    default: bool = False
    reference: bool = False
    baseline: bool = False
    reproducible: bool = True


BACKEND_SPECS: dict[str, BackendSpec] = {}
BACKENDS: dict[str, Callable] = {}  # name -> factory(encoder, x, mask, kept): what the encoder calls


def register_backend(spec: BackendSpec) -> BackendSpec:
    if spec.name in BACKEND_SPECS:
        raise RuntimeError(f"backend {spec.name!r} is declared twice")
    BACKEND_SPECS[spec.name] = spec
    BACKENDS[spec.name] = spec.factory
    return spec


def _the(flag: str) -> str:
    (name,) = [s.name for s in BACKEND_SPECS.values() if getattr(s, flag)]
    return name


def default_backend() -> str:
    """The encoder's and the trainer's default backend."""
    return _the("default")


def reference_backend() -> str:
    """The exact backend with no compiled kernels: what the others are tested against."""
    return _the("reference")


def baseline_backends() -> list[str]:
    """What the end-to-end benchmark reports speed-ups against."""
    return [s.name for s in BACKEND_SPECS.values() if s.baseline]


def available_backends(device: str) -> list[str]:
    """The backends that run on ``device`` in this installation."""
    return [s.name for s in BACKEND_SPECS.values() if s.why_unavailable(device) is None]


def backends_help() -> str:
    """The ``--backend`` help: every backend's name and summary."""
    return "encoder backend: " + "; ".join(f"{s.name} ({s.summary})" for s in BACKEND_SPECS.values())
