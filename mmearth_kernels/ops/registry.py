"""The op table: every op of this library declared once, and everything that is derived from it.

An op module (``ops/<op>.py``) registers its fake kernels and autograd, then declares itself with one
:func:`register_op` of an :class:`OpSpec`: its public function, its reference, its implementations
(:class:`Impl`: which impl kind and tiling, which registered torch op the forward calls and which backward op it
registers, or which other op's kernels a composite reuses), sample inputs for the tests, benchmark shapes,
FLOPs and bytes. From the table come ``available_impls`` and ``impl="auto"``, the dispatch of every public call
(:meth:`OpSpec.resolve`), the dispatcher queries of ``_extension``, ``python -m mmearth_kernels.info``, the
FLOP formulas ``torch.utils.flop_counter`` uses, :func:`torch_op_index` (a profiler's op name -> its op), the
kernel benchmark grid and the generated conformance tests. No other list of op or impl names exists.

Impl kinds (the ``impl=`` argument):
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import _extension
from .. import triton_kernels as _triton

NAMESPACE = _extension.NAMESPACE


@dataclass(frozen=True)
class ImplKind:
    name: str
    description: str
    dispatch_key: str | None = None  # C++ kernels: the dispatcher key they are registered under


IMPL_KINDS = (
    ImplKind("ref", "pure PyTorch (mmearth_kernels.reference): the ground truth, any device"),
    ImplKind("cpu", "the C++ CPU kernels (csrc/cpu), CPU tensors", "CPU"),
    ImplKind("cuda", "the CUDA kernels (csrc/cuda), CUDA tensors", "CUDA"),
    ImplKind("triton", "the Triton kernels, CUDA tensors (CPU tensors only under TRITON_INTERPRET=1, for tests)"),
)
KINDS = {k.name: k for k in IMPL_KINDS}
IMPLS = ("auto", *KINDS)
__doc__ += "".join(f"\n* ``{k.name!r}``: {k.description}." for k in IMPL_KINDS) + (
    "\n* ``'auto'``: the first available of :data:`AUTO_ORDER` for the input's device.\n")

# Preference order per device type for impl="auto". CPU: the C++ kernels (Triton on CPU is the interpreter, for
# tests only). CUDA: Triton first until GPU measurements (benchmarks/gpu_check.sh) say otherwise.
AUTO_ORDER = {"cpu": ("cpu", "ref"), "cuda": ("triton", "cuda", "ref")}
MODES = ("fwd", "bwd")


@dataclass(frozen=True)
class Impl:
    """One way an op runs: ``kind`` (the ``impl=`` name) on ``tiling``.

    A kernel impl names ``forward``, the registered op (``mmearth_kernels::<forward>``) that its forward calls with
    ``(*inputs, *layout_args(layout), *params)`` (the first output is the op's result), and ``backward``, the backward
    op it registers (None when its autograd reuses another op's backward op). A composite (``run`` set) calls
    other ops instead: ``run(*inputs, layout, *params)``; ``uses`` names the op whose same-kind kernels it needs.
    The reference impl is a composite of PyTorch ops.
    """

    kind: str
    tiling: str = "rows"
    forward: str | None = None
    backward: str | None = None
    layout_args: Callable | None = None
    run: Callable | None = None
    uses: str | None = None

    @property
    def fused(self) -> bool:
        """Its own kernel (not a composite of other ops)."""
        return self.forward is not None

    @property
    def label(self) -> str:
        """``triton`` on rows, ``triton-patches`` on another tiling: the name benchmarks and test ids use."""
        return self.kind if self.tiling == "rows" else f"{self.kind}-{self.tiling}"

    @property
    def torch_ops(self) -> dict[str, str]:
        """Mode -> the registered op this impl declares (forward, and its own backward op if any)."""
        return {m: n for m, n in zip(MODES, (self.forward, self.backward)) if n is not None}

    def __call__(self, inputs, layout, params):
        if self.run is not None:
            return self.run(*inputs, layout, *params)
        out = getattr(torch.ops.mmearth_kernels, self.forward)(*inputs, *self.layout_args(layout), *params)
        return out[0] if isinstance(out, tuple) else out


@dataclass
class Sample:
    """One test input of an op: ``inputs`` (the differentiable tensors in the public function's order, None for
    an absent bias), the ``layout`` passed to the public function, ``params`` (the torch ops' trailing scalar
    arguments) and ``kwargs`` (the same, as the public function takes them)."""

    inputs: list
    layout: object
    params: tuple
    kwargs: dict
    name: str
    case: object = None

    def call(self, spec: OpSpec, impl: Impl, inputs=None, layout=None):
        """The public function on this sample (or on ``inputs``, ``layout`` in their place) with ``impl``."""
        kw = dict(self.kwargs, impl=impl.kind)
        if impl.tiling != "rows":
            kw["tiling"] = impl.tiling
        return spec.fn(*(self.inputs if inputs is None else inputs), self.layout if layout is None else layout, **kw)


@dataclass(frozen=True)
class Baseline:
    """A benchmark baseline: ``build(inputs, layout)`` returns the forward to time; ``when(device)`` says whether
    it runs there."""

    name: str
    build: Callable
    when: Callable = lambda device: True


@dataclass(frozen=True)
class BenchSpec:
    """The kernel benchmark of an op: its test name (``benchmarks/bench_kernels.py::test_<name>``), the width of the
    benchmarked rows in stage channels (4: the MLP's hidden tensor), ``inputs(N, C, generator) -> (inputs,
    kwargs)``, the modes timed, the baselines, whether the reference is timed too, and which row the report
    divides by."""

    name: str
    inputs: Callable
    baselines: tuple = ()
    reference_baseline: str = "ref"
    width: int = 1
    modes: tuple = ("fwd", "bwd", "fwdbwd")
    time_ref: bool = False


@dataclass
class OpSpec:
    """One op, declared once (see the module docstring).

    ``bytes``: elements of C moved per row by each mode (what benchmarks and the profiler divide time by for
    GB/s; ``fwdbwd`` is their sum), consistent with ``benchmarks/bytes_model.py``. ``flops``: the FLOP formula of
    each mode's ops for ``torch.utils.flop_counter`` (FlopCounterMode's convention: 2 x the multiply-adds of
    convolutions and matmuls, 0 for elementwise ops and reductions); each gets the op's arguments as shapes.
    ``backward_inputs(inputs, outputs)``: the tensors its backward ops take between the gradient and the layout
    arguments. ``tolerances``: fp32/fp64 against the fp64 reference (low precision: 2x PyTorch's own error).
    """

    name: str
    summary: str
    fn: Callable
    reference: Callable
    impls: tuple
    samples: Callable
    grad_names: tuple
    category: str
    bytes: dict
    flops: dict
    bench: BenchSpec
    backward_inputs: Callable | None = None
    tolerances: dict = field(default_factory=dict)
    _resolved: dict = field(default_factory=dict, repr=False)

    # -- the table's questions ------------------------------------------------------------------
    @property
    def tilings(self) -> tuple:
        return tuple(dict.fromkeys(i.tiling for i in self.impls))

    @property
    def kinds(self) -> tuple:
        return tuple(dict.fromkeys(i.kind for i in self.impls))

    def impl(self, kind: str, tiling: str = "rows") -> Impl | None:
        return next((i for i in self.impls if i.kind == kind and i.tiling == tiling), None)

    def bytes_per_row(self, mode: str) -> int:
        return sum(self.bytes[m] for m in MODES) if mode == "fwdbwd" else self.bytes[mode]

    def why_unavailable(self, kind: str, device: torch.device | str) -> str | None:
        """None if ``kind`` runs on ``device`` in this installation, else why not."""
        dev = torch.device(device)
        impl = self.impl(kind)
        if impl is None:
            return f"{self.name} has no {kind!r} impl"
        if impl.uses is not None:
            return OPS[impl.uses].why_unavailable(kind, dev)
        if kind == "triton":
            return None if _triton.usable(dev) else _triton.why_not(dev)
        key = KINDS[kind].dispatch_key
        if key is None:
            return None
        if dev.type != kind:
            return f"impl={kind!r} runs on {kind} tensors, not {dev.type}"
        if not _extension.has_kernel(impl.forward, key):
            return f"mmearth_kernels._C has no {key} kernel for {impl.forward}"
        return None

    def available_impls(self, device: torch.device | str) -> list[str]:
        """Impl kinds of this op that can run on ``device`` here (any tiling)."""
        return [k for k in self.kinds if self.why_unavailable(k, device) is None]

    # -- dispatch -------------------------------------------------------------------------------
    def resolve(self, impl: str, device: torch.device, tiling: str = "rows") -> Impl:
        """The :class:`Impl` to run, or a clear error saying why the requested one cannot. Remembered per
        (impl, tiling, device type): what is built and importable does not change in a process, and every call asks
        (7 us of Python each time otherwise)."""
        key = (impl, tiling, device.type)
        hit = self._resolved.get(key)
        if hit is None:
            hit = self._resolved[key] = self._resolve(impl, device, tiling)
        return hit

    def _resolve(self, impl: str, device: torch.device, tiling: str) -> Impl:
        if tiling not in self.tilings:
            raise ValueError(f"tiling must be one of {self.tilings}, got {tiling!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if impl == "auto":
            avail = self.available_impls(device)
            impl = next((k for k in AUTO_ORDER.get(device.type, ()) if k in avail), "ref")
        elif impl == "triton" and not _triton.usable(device):
            raise RuntimeError(f"{self.name}: impl='triton' cannot run here: {_triton.why_not(device)}")
        elif KINDS[impl].dispatch_key is not None:
            _extension.require(f"{self.name}(impl={impl!r})")
            if device.type != impl:
                raise ValueError(f"{self.name}: impl={impl!r} runs on {impl} tensors, but the input is on {device}; "
                                 f"use impl='auto' to pick per device")
            if self.why_unavailable(impl, device) is not None:
                raise RuntimeError(f"{self.name}: impl={impl!r} is not in this build (mmearth_kernels._C was built "
                                   f"without its {impl.upper()} kernels; see `python -m mmearth_kernels.info`)")
        found = self.impl(impl, tiling)
        if found is None:
            have = [i.kind for i in self.impls if i.tiling == tiling]
            raise ValueError(f"{self.name}: tiling={tiling!r} is implemented by impl={', '.join(map(repr, have))} "
                             f"only, not impl={impl!r}: pass one of those, or another tiling")
        return found


OPS: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    """File ``spec`` in the table: ask the dispatcher once which of its C++ ops have kernels (a dict lookup
    afterwards, which torch.compile can trace) and register its FLOP formulas."""
    if spec.name in OPS:
        raise RuntimeError(f"op {spec.name!r} is declared twice")
    if spec.impl("ref") is None:
        raise ValueError(f"{spec.name}: every op needs a 'ref' impl (its reference)")
    for impl in spec.impls:
        key = KINDS[impl.kind].dispatch_key
        if key is not None and impl.fused:
            _extension.query_kernels(impl.torch_ops.values(), key)
    OPS[spec.name] = spec
    _register_flop_formulas(spec)
    return spec


def torch_op_index() -> dict[str, tuple[OpSpec, str]]:
    """Every registered torch op's qualified name as the profiler shows it (``"mmearth_kernels::grn_backward_triton"``)
    -> (its op's spec, ``"fwd"`` or ``"bwd"``). A backward op shared by several ops (the conv's, used by the fused
    conv + LayerNorm too) belongs to the op that declares it."""
    return {f"{NAMESPACE}::{name}": (spec, mode) for spec in OPS.values() for impl in spec.impls
            for mode, name in impl.torch_ops.items()}


def existing_torch_op(name: str):
    """``torch.ops.mmearth_kernels.<name>`` if this installation registered it (C++ ops need the extension, Triton
    ops need triton), else None."""
    try:
        return getattr(torch.ops.mmearth_kernels, name)
    except (AttributeError, RuntimeError):
        return None


def triton_op(name: str, schema: str, module: str, function: str, **options) -> None:
    """Define ``mmearth_kernels::<name>(<schema>)`` as a ``custom_op`` (not ``triton_op``: that one fails fake-tensor
    checks under the interpreter) running ``triton_kernels.<module>.<function>(*args, **options)``, imported on first
    call (importing triton costs about a second). Nothing where triton is not installed."""
    if not _triton.HAS_TRITON:
        return

    def run(*args):
        return getattr(importlib.import_module(f"{_triton.__name__}.{module}"), function)(*args, **options)

    torch.library.custom_op(f"{NAMESPACE}::{name}", run, mutates_args=(), schema=schema)


def register_kernels(forward: str, backward: str, *, fake_forward, setup_context, autograd_for,
                     fake_backward=None) -> None:
    """The fake kernel and autograd of the op ``forward`` (a C++ schema or a Triton ``custom_op``), whose autograd
    ``autograd_for(backward_op)`` calls the op ``backward``; and the fake kernel of ``backward`` where the op declaring
    it passes ``fake_backward``. Nothing where this installation lacks either op."""
    backward_op = existing_torch_op(backward)
    if existing_torch_op(forward) is None or backward_op is None:
        return
    torch.library.register_fake(f"{NAMESPACE}::{forward}")(fake_forward)
    if fake_backward is not None:
        torch.library.register_fake(f"{NAMESPACE}::{backward}")(fake_backward)
    torch.library.register_autograd(f"{NAMESPACE}::{forward}", autograd_for(backward_op), setup_context=setup_context)


def _register_flop_formulas(spec: OpSpec) -> None:
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    for impl in spec.impls:
        for mode, name in impl.torch_ops.items():
            packet = existing_torch_op(name)
            if packet is not None and packet not in flop_registry:
                register_flop_formula(packet)(spec.flops[mode])


def available_impls(op: str, device: torch.device | str) -> list[str]:
    """Concrete implementations of ``op`` that can run on ``device`` in this installation."""
    return OPS[op].available_impls(device)


def impls_help() -> str:
    """The ``--impl`` help: every impl kind and what it is."""
    return ("kernel implementation: auto (the first available of " + "; ".join(
        f"{dev}: {' > '.join(order)}" for dev, order in AUTO_ORDER.items()) + "), "
        + "; ".join(f"{k.name} ({k.description})" for k in IMPL_KINDS))
