"""The Triton compiles to check: every entry point driven with the model's shapes, its launches captured, not run.

The launchers of ``mmearth_kernels.triton_kernels`` (``forward``, ``backward``, ``forward_ln`` of each module) run on
CPU tensors of the shapes training uses (ConvNeXt V2 atto and tiny, every stage, the kernel benchmarks' batch and
mask ratio), with ``JITFunction.run`` and ``Autotuner.run`` replaced by a recorder: each launch gives the kernel and
its arguments, and a launch through an autotuner gives one launch per config. Triton's own binder then turns the
arguments into what a launch on the GPU compiles: the signature (pointer and scalar types), the constexprs (with
the integers equal to 1 that Triton specialises on) and the divisibility-by-16 attributes of integers and pointers.
Launches that compile the same thing are merged into one job.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.autotuner import Autotuner
from triton.runtime.jit import JITFunction, create_function_from_signature

from benchmarks.conftest import BATCH, stage_layout
from mmearth_kernels.testing import atto_stage_shapes, tiny_stage_shapes

from .discover import name_of

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
MODELS = {"atto": atto_stage_shapes, "tiny": tiny_stage_shapes}
ARCHS = {"sm_90a": 90, "sm_80": 80}  # Triton's arch name for a capability (sm_90a for 90: wgmma, setmaxnreg)
KERNEL_SIZE = 7  # ConvNeXt's depthwise kernel, the only size the model uses
EPS = 1e-6
MLP_RATIO = 4    # GRN runs on the block's hidden tensor: 4 x the stage's channels


@dataclass
class Launch:
    kernel: str        # "module.name"
    fn: JITFunction
    args: tuple
    kwargs: dict       # the launch's keyword arguments, a config's block sizes and warps included
    config: str | None  # "BLOCK_C=64, num_warps=4" under an autotuner, None for a plain jit kernel
    config_keys: tuple  # the keyword arguments the config set
    scenario: str      # what launched it: "atto 56px C40 bf16 sparse_dwconv.backward"
    dtype: str


def config_label(cfg: triton.Config) -> str:
    return ", ".join([f"{k}={v}" for k, v in cfg.kwargs.items()] + [f"num_warps={cfg.num_warps}"])


@contextlib.contextmanager
def capture():
    """Record every Triton launch made inside the block instead of running it (a list of :class:`Launch`; set
    ``state["scenario"]`` and ``state["dtype"]`` to label them)."""
    launches: list[Launch] = []
    state = {"config": None, "config_keys": (), "scenario": "", "dtype": ""}

    def jit_run(self, *args, grid, warmup, **kwargs):
        launches.append(Launch(name_of(self), self, args, kwargs, state["config"], state["config_keys"],
                               state["scenario"], state["dtype"]))

    def autotuner_run(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))  # as Autotuner.run sets it: its pruning reads the arguments
        pruned = self.prune_configs({k: v for k, v in kwargs.items() if k not in ("grid", "warmup")})
        for cfg in pruned:  # every config it keeps, as the autotuner benchmarks them all on a cold cache
            state["config"], state["config_keys"] = config_label(cfg), tuple(cfg.all_kwargs())
            self.fn.run(*args, **kwargs, **cfg.all_kwargs())
        state["config"], state["config_keys"] = None, ()

    saved = JITFunction.run, Autotuner.run
    JITFunction.run, Autotuner.run = jit_run, autotuner_run
    try:
        yield launches, state
    finally:
        JITFunction.run, Autotuner.run = saved


def drive_stage(lay, C: int, dtype: torch.dtype, label, state) -> None:
    """Every launcher of the package on one stage: the conv (rows and patches tilings: forward, backward,
    conv + LayerNorm) at C channels and GRN / GELU + GRN (forward, backward; both statistics) at 4 C."""
    from mmearth_kernels.triton_kernels import grn, sparse_dwconv, sparse_dwconv_tiled

    def tensor(*shape):  # nothing runs: only shapes, dtypes and alignment reach the compile
        return torch.empty(*shape, dtype=dtype)

    N = lay.num_rows
    x, g, w = tensor(N, C), tensor(N, C), tensor(C, 1, KERNEL_SIZE, KERNEL_SIZE)
    b, lnw, lnb = tensor(C), tensor(C), tensor(C)
    everything = (True, True, True)
    t = lay.patch_table
    calls = {
        "sparse_dwconv.forward": lambda: sparse_dwconv.forward(x, w, b, lay.row_pos, lay.inv_map),
        "sparse_dwconv.backward": lambda: sparse_dwconv.backward(g, x, w, lay.row_pos, lay.inv_map, everything),
        "sparse_dwconv.forward_ln": lambda: sparse_dwconv.forward_ln(x, w, b, lnw, lnb, lay.row_pos, lay.inv_map,
                                                                     EPS),
        "sparse_dwconv_tiled.forward": lambda: sparse_dwconv_tiled.forward(x, w, b, t.row0, t.stride, t.patches,
                                                                           t.pad, lay.block),
        "sparse_dwconv_tiled.backward": lambda: sparse_dwconv_tiled.backward(g, x, w, t.row0, t.stride, t.patches,
                                                                             t.pad, lay.block, everything),
        "sparse_dwconv_tiled.forward_ln": lambda: sparse_dwconv_tiled.forward_ln(x, w, b, lnw, lnb, t.row0, t.stride,
                                                                                 t.patches, t.pad, lay.block, EPS),
    }
    CH = MLP_RATIO * C
    h, gh, gamma, beta = tensor(N, CH), tensor(N, CH), tensor(CH), tensor(CH)
    for batch_stats in (False, True):
        for gelu in (False, True):
            op = f"grn.{'gelu_' if gelu else ''}{'batch' if batch_stats else 'per_sample'}"
            calls[op + ".forward"] = lambda bs=batch_stats, ge=gelu: grn.forward(h, gamma, beta, lay.offsets, EPS, bs,
                                                                                ge)
            calls[op + ".backward"] = lambda bs=batch_stats, ge=gelu: grn.backward(
                gh, h, gamma, grn.forward(h, gamma, beta, lay.offsets, EPS, bs, ge)[1], lay.offsets, EPS, bs,
                everything, ge)
    for what, call in calls.items():
        state["scenario"] = f"{label} {what}"
        call()


def launches(models=tuple(MODELS), dtypes=tuple(DTYPES), batch: int = BATCH) -> list[Launch]:
    """Every launch training makes, captured: each model's stages x dtypes x launchers."""
    with capture() as (out, state):
        for model in models:
            for res, C in MODELS[model]():
                lay = stage_layout(res, "cpu", batch=batch)
                for dt in dtypes:
                    state["dtype"] = dt
                    drive_stage(lay, C, DTYPES[dt], f"{model} {res}px C{C} {dt}", state)
    return out


@dataclass
class TritonJob:
    """One compile: a kernel, one config, one specialisation, one architecture."""

    kernel: str
    module: str
    attr: str          # the kernel's name in its module (an Autotuner or a JITFunction)
    arch: str
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict
    config: str | None
    constants: str     # the kernel's own constexprs (K, BS, HAS_BIAS, ...), for the record
    specialisation: str  # what Triton specialised on: "C%16, N%16, S=1"
    key: str
    dtypes: list = field(default_factory=list)
    scenarios: list = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.kernel} [{self.config or 'no autotune'}] {'/'.join(self.dtypes)} {self.arch}"


def _describe(fn: JITFunction, signature: dict, constexprs: dict, attrs: dict, config_keys) -> tuple[str, str]:
    """(the kernel's declared constexprs, what Triton specialised) as short strings for the record."""
    consts, spec = [], []
    for i, p in enumerate(fn.params):
        name, val = p.name, constexprs.get((i,))
        if p.is_constexpr:
            if name not in config_keys:
                consts.append(f"{name}={val}")
        elif signature[name] == "constexpr":  # an integer equal to 1 (or None): a compile-time constant
            spec.append(f"{name}={val}")
        elif any(a[0] == "tt.divisibility" for a in attrs.get((i,), [])) and not signature[name].startswith("*"):
            spec.append(f"{name}%16")
        elif signature[name].startswith("*") and not attrs.get((i,)):
            spec.append(f"{name} unaligned")
    return ", ".join(consts), ", ".join(spec)


def jobs(captured: list[Launch], archs=("sm_90a",)) -> list[TritonJob]:
    """The distinct compiles of the captured launches for each architecture, as Triton's launcher would make them
    (its binder and ``_pack_args``, the same code path as ``JITFunction.run``)."""
    out: dict[str, TritonJob] = {}
    for arch in archs:
        backend = make_backend(GPUTarget("cuda", ARCHS[arch], 32))
        binders = {}
        for launch in captured:
            fn = launch.fn
            kwargs = dict(launch.kwargs)
            # as JITFunction.run sets them before binding
            kwargs["debug"] = kwargs.get("debug", fn.debug) or triton.knobs.runtime.debug
            kwargs["instrumentation_mode"] = triton.knobs.compilation.instrumentation_mode
            if id(fn) not in binders:
                binders[id(fn)] = create_function_from_signature(fn.signature, fn.params, backend)
            bound, specialization, options = binders[id(fn)](*launch.args, **kwargs)
            options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
            opts = options.__dict__
            key = hashlib.sha256(f"{ASTSource(fn, signature, constexprs, attrs).hash()}-{sorted(opts.items())}-"
                                 f"{arch}".encode()).hexdigest()[:16]
            job = out.get(key)
            if job is None:
                consts, spec = _describe(fn, signature, constexprs, attrs, launch.config_keys)
                module = fn.fn.__module__
                job = out[key] = TritonJob(launch.kernel, module, fn.fn.__name__, arch, signature, constexprs, attrs,
                                           opts, launch.config, consts, spec, key)
            if launch.dtype not in job.dtypes:
                job.dtypes.append(launch.dtype)
            if launch.scenario not in job.scenarios:
                job.scenarios.append(launch.scenario)
    return list(out.values())
