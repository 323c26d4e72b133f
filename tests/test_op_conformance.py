"""Every op x impl (x tiling) x dtype x mask case of the op table (``mmearth_kernels.ops.registry.OPS``), generated:
a new op or impl gets every check by being declared, and ``test_every_declaration_is_checked`` fails if one lacks
any.

* parity: forward and every gradient against the fp64 reference (the table's tolerances; low precision within 2x
  PyTorch's own error), on every mask case (nothing masked, blocks of 1..4 px, a sample fully masked, the whole
  batch masked);
* fp64 ``gradcheck``;
* ``torch.library.opcheck`` of the ops each impl really dispatches to, forward and backward, on every sample in fp32
  and on two cases in fp64 and bf16, with ``requires_grad`` mixed across samples (the gradients asked for must be
  those of the full backward);
* ``output_mask``: a backward op computes only the gradients asked for (the others come back empty), every mask;
* ``torch.compile(fullgraph=True)`` with the layout built inside the graph, forward and backward equal eager;
* under autocast every impl returns the activation's dtype.

Ids name op, impl, dtype and case (``[grn-triton-fp32-batch_masked]``), so a GPU run selects them with ``-k``.
"""

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry

import mmearth_kernels as mk
from mmearth_kernels.ops.registry import NAMESPACE, OPS, existing_torch_op, torch_op_index
from mmearth_kernels.testing import MASK_CASES, case_mask

from _compare import check_against_reference
from conftest import impl_device, impl_marks

DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}
CASES = {c.name: c for c in MASK_CASES}
# opcheck: every sample in fp32, two cases (a sample fully masked; several blocks per patch) in fp64 and bf16
OPCHECK = [("fp32", c) for c in CASES] + [(d, c) for d in ("fp64", "bf16") for c in ("sample_masked", "ratio0.75")]
# requires_grad per sample, rotated over the samples: autograd must hand back exactly the gradients asked for
GRAD_PATTERNS = ("all", "none", "first", "second")
OUTPUT_MASKS = [list(m) for m in itertools.product([True, False], repeat=3) if any(m)]
COMPILE_CASE = CASES["ratio0.75"]  # kept fixed: the layout can be built inside a fullgraph


def _impls(kernels_only=False, with_ref=False):
    """(spec, impl, device, marks) of every impl but the reference (the oracle), or of every kernel impl."""
    for spec in OPS.values():
        for impl in spec.impls:
            if (impl.kind != "ref" or with_ref) and (impl.fused or not kernels_only):
                device = impl_device(impl.kind)
                yield spec, impl, device, impl_marks(spec, impl.kind, device)


def _params(kernels_only=False, grid=((),), with_ref=False):
    return [pytest.param(spec, impl, device, *extra, marks=marks, id="-".join([spec.name, impl.label, *extra]))
            for spec, impl, device, marks in _impls(kernels_only, with_ref) for extra in grid]


PARITY = _params(grid=list(itertools.product(DTYPES, CASES)))
GRADCHECK = _params(grid=[("fp64",)])
OPCHECKS = _params(kernels_only=True, grid=OPCHECK)
BACKWARD = [p for p in _params(kernels_only=True, grid=[("fp32",)]) if p.values[1].backward]
COMPILE = _params(grid=[("fp32", COMPILE_CASE.name)])
AUTOCAST = _params(grid=[("bf16",)], with_ref=True)


@pytest.mark.parametrize("spec, impl, device, dtype, case", PARITY)
def test_parity(spec, impl, device, dtype, case, poison):
    samples = spec.samples(device, DTYPES[dtype], requires_grad=True, cases=[CASES[case]])
    assert samples, f"{spec.name} has no {dtype} sample for {case}"
    ref = spec.impl("ref", impl.tiling)
    for i, s in enumerate(samples):
        check_against_reference(
            f"{s.name} {impl.label}", lambda *t, s=s: s.call(spec, impl, t), lambda *t, s=s: s.call(spec, ref, t),
            s.inputs, DTYPES[dtype], spec.grad_names, seed=i, tolerances=spec.tolerances)


@pytest.mark.parametrize("spec, impl, device, dtype", GRADCHECK)
def test_gradcheck(spec, impl, device, dtype):
    """fp64 gradcheck on the small samples: the smallest non-empty one in full (the whole Jacobian, O(numel)
    forwards), the others (and all under the interpreter) in fast mode (a random projection of it)."""
    samples = sorted((s for s in spec.samples(device, torch.float64, requires_grad=True)
                      if s.inputs[0].numel() <= 700), key=lambda s: s.inputs[0].numel())
    assert len(samples) >= 3, "the samples must keep a few small enough for gradcheck"
    full = next(s for s in samples if s.inputs[0].numel())
    for s in samples:
        live = [t for t in s.inputs if t is not None]

        def f(*t, s=s):
            it = iter(t)
            return s.call(spec, impl, [None if x is None else next(it) for x in s.inputs])

        assert torch.autograd.gradcheck(f, live, fast_mode=impl.kind == "triton" or s is not full), s.name


def _set_requires_grad(inputs, pattern):
    for i, t in enumerate(inputs):
        if t is not None:
            t.requires_grad_(pattern == "all" or (pattern, i) in (("first", 0), ("second", 1)))


def _op_args(impl, s):
    return (*s.inputs, *impl.layout_args(s.layout), *s.params)


def _backward_args(spec, impl, s, grad_seed=0):
    """The backward op's arguments up to ``output_mask``: the gradient, what it takes from the forward, the layout."""
    out = getattr(torch.ops.mmearth_kernels, impl.forward)(*(t.detach() if torch.is_tensor(t) else t
                                                             for t in _op_args(impl, s)))
    y = out[0] if isinstance(out, tuple) else out
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    inputs = [None if t is None else t.detach() for t in s.inputs]
    return (g.to(y.device, y.dtype), *spec.backward_inputs(inputs, out), *impl.layout_args(s.layout), *s.params)


@pytest.mark.parametrize("spec, impl, device, dtype, case", OPCHECKS)
def test_opcheck(spec, impl, device, dtype, case):
    forward = getattr(torch.ops.mmearth_kernels, impl.forward)
    for j, s in enumerate(spec.samples(device, DTYPES[dtype], cases=[CASES[case]])):
        pattern = GRAD_PATTERNS[(CASES[case].seed + j) % len(GRAD_PATTERNS)]
        _set_requires_grad(s.inputs, pattern)
        torch.library.opcheck(forward.default, _op_args(impl, s))
        if pattern in ("first", "second") and s.inputs[0].numel():
            live = [t for t in s.inputs if t is not None and t.requires_grad]
            y = s.call(spec, impl)
            g = torch.randn_like(y)
            got = torch.autograd.grad(y, live, g)
            full = [None if t is None else t.detach().requires_grad_() for t in s.inputs]
            want = torch.autograd.grad(s.call(spec, impl, full), [f for f, t in zip(full, s.inputs)
                                                                    if t is not None and t.requires_grad], g)
            for a, b in zip(got, want):  # another summation order at most (dx alone on CPU): the dtype's tolerance
                torch.testing.assert_close(a, b, msg=lambda m: f"{s.name} {pattern}: {m}")
        if impl.backward:
            torch.library.opcheck(getattr(torch.ops.mmearth_kernels, impl.backward).default,
                                  (*_backward_args(spec, impl, s, j), [True, True, True]))


@pytest.mark.parametrize("spec, impl, device, dtype", BACKWARD)
def test_backward_computes_only_what_is_asked(spec, impl, device, dtype):
    """``output_mask`` as aten::convolution_backward: asked gradients equal the full backward's, the others come
    back empty (never unfilled memory of the full shape); the fake kernel agrees for every mask (opcheck)."""
    backward = getattr(torch.ops.mmearth_kernels, impl.backward)
    for case in ("sample_masked", "batch_masked"):  # 4 px blocks and a sample fully masked; N = 0
        for j, s in enumerate(spec.samples(device, torch.float32, cases=[CASES[case]])):
            args = _backward_args(spec, impl, s, j)
            full = backward(*args, [True, True, True])
            for mask in OUTPUT_MASKS:
                got = backward(*args, mask)
                for i, (g, f, on) in enumerate(zip(got, full, mask)):
                    if on:  # dx alone may take another summation order (the CPU gather with a flipped kernel)
                        torch.testing.assert_close(g, f, rtol=1e-6, atol=1e-6, msg=lambda m: f"{s.name} {i}: {m}")
                    else:
                        assert g.numel() == 0, f"{s.name} {mask}: output {i} was not asked for but has {g.shape}"
                if case == "sample_masked" and j == 0:
                    torch.library.opcheck(backward.default, (*args, mask))


@pytest.mark.parametrize("spec, impl, device, dtype, case", COMPILE)
def test_compiled_equals_eager(spec, impl, device, dtype, case):
    """``torch.compile(fullgraph=True)``, the layout built inside the graph as the encoder does every step; forward
    and backward equal eager. Inductor where the op has a compiled kernel on this device, AOT autograd alone
    otherwise (the interpreter, the composites): fake kernels, autograd and tracing are what is checked. On CUDA also
    CUDA graphs (reduce-overhead), which catch kernels launched on the wrong stream."""
    s = spec.samples(device, torch.float32, cases=[COMPILE_CASE])[0]
    mask, kept = case_mask(COMPILE_CASE, device)

    def f(*inputs):
        return s.call(spec, impl, inputs, mk.build_layout(mask, COMPILE_CASE.resolution, kept))

    modes = [dict(backend="inductor" if device == "cuda" or impl.kind == "cpu" else "aot_eager")]
    modes += [dict(mode="reduce-overhead")] if device == "cuda" else []
    outs = []
    for fn in [f] + [torch.compile(f, fullgraph=True, **m) for m in modes]:
        torch._dynamo.reset()
        leaves = [None if t is None else t.detach().clone().requires_grad_() for t in s.inputs]
        y = fn(*leaves)
        (y * torch.linspace(-1, 1, y.numel(), device=device).view_as(y)).sum().backward()
        outs.append([y.detach()] + [t.grad for t in leaves if t is not None])
    for got in outs[1:]:
        for a, b in zip(got, outs[0]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spec, impl, device, dtype", AUTOCAST)
def test_autocast_returns_the_activation_dtype(spec, impl, device, dtype):
    """Under autocast the activation arrives in bf16 and the parameters stay fp32: every impl returns bf16, the
    fused ones and the composites (the reference, the unfused "cuda" ones), whose F.layer_norm autocast runs in fp32,
    alike."""
    s = spec.samples(device, torch.bfloat16, cases=[CASES["ratio0.75"]])[0]
    s.inputs[1:] = [None if t is None else t.float() for t in s.inputs[1:]]
    with torch.autocast(device, dtype=torch.bfloat16):
        y = s.call(spec, impl)
    assert y.dtype == torch.bfloat16, f"{spec.name} impl={impl.label} under autocast returned {y.dtype}"


def _op_names_here() -> set:
    """Every op this installation registered in our namespace that takes a tensor."""
    names = {n for n in torch._C._dispatch_get_all_op_names() if n.startswith(f"{NAMESPACE}::")}
    return {n for n in names if any("Tensor" in str(a.type) for a in torch._C._get_schema(n, "").arguments)}


def test_every_declaration_is_checked():
    """Walks the op table: every op and impl has every generated check, every registered op that takes a tensor
    is declared and goes through opcheck in more than one dtype (forward and backward), every backward op through
    the output_mask check, every registered op has a FLOP formula."""
    def covered(params):
        return {(p.values[0].name, p.values[1].label) for p in params}

    for spec, impl, _, _ in _impls():
        key = (spec.name, impl.label)
        for what, params in (("parity", PARITY), ("gradcheck", GRADCHECK), ("compile", COMPILE),
                             ("autocast", AUTOCAST)):
            assert key in covered(params), f"{key}: no {what} check"
        cases = {(p.values[3], p.values[4]) for p in PARITY if (p.values[0].name, p.values[1].label) == key}
        assert cases == set(itertools.product(DTYPES, CASES)), f"{key}: parity covers only {sorted(cases)}"
    index = torch_op_index()
    for name, (spec, mode) in index.items():
        dtypes = {p.values[3] for p in OPCHECKS if name.split("::")[1] in p.values[1].torch_ops.values()}
        assert len(dtypes) >= 2, f"{name} is opchecked in {dtypes}"
        packet = existing_torch_op(name.split("::")[1])
        assert packet is None or packet in flop_registry, f"{name} has no FLOP formula"
        if mode == "bwd":
            assert any(name.split("::")[1] == p.values[1].backward for p in BACKWARD), f"{name}: no output_mask check"
    undeclared = _op_names_here() - set(index)
    assert not undeclared, f"registered but not in the op table (so never checked): {sorted(undeclared)}"


def _flops(fn) -> dict:
    with FlopCounterMode(display=False) as counter:
        fn()
    return {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}


@pytest.mark.parametrize("spec, impl, device", [p for p in _params(kernels_only=True)])
def test_flop_counter_counts_our_ops(spec, impl, device):
    """FlopCounterMode counts each op as 2 x its multiply-adds: the depthwise conv K*K per channel and row forward,
    as much again for dx and for dweight; GRN and GELU + GRN count 0 (elementwise and reductions)."""
    s = spec.samples(device, torch.float32, requires_grad=True, cases=[CASES["ratio0.75"]])[0]
    x, weight = s.inputs[0], s.inputs[1]
    per_pass = 2 * x.shape[0] * x.shape[1] * weight.shape[-1] ** 2 if weight.dim() == 4 else 0
    s.inputs[1].requires_grad_(False)  # a frozen weight: no dweight pass
    fwd = _flops(lambda: s.call(spec, impl))
    assert f"{NAMESPACE}.{impl.forward}" in fwd, f"the counter did not see {impl.forward}: {fwd}"
    assert sum(v for k, v in fwd.items() if k.startswith(NAMESPACE)) == per_pass, fwd
    y = s.call(spec, impl)
    bwd = _flops(lambda: y.backward(torch.ones_like(y)))
    assert any(k.startswith(NAMESPACE) for k in bwd), f"the counter saw no backward op of ours: {bwd}"
    assert sum(v for k, v in bwd.items() if k.startswith(NAMESPACE)) == per_pass, bwd  # dx only
