"""Comparison helpers: fp32/fp64 against tight tolerances, low precision against 2x PyTorch's own error."""

import torch

from mmearth_kernels.testing import LOW_PRECISION, TOLERANCES


def max_err(a, b):
    if a is None or b is None or a.numel() == 0:
        return 0.0
    return (a.double() - b.double()).abs().max().item()


def check_close(name, got, ref64, pt=None, dtype=torch.float32, tolerances=None):
    """fp32/fp64: assert_close to the fp64 reference (``tolerances[dtype]``, default ``testing.TOLERANCES``). Low
    precision: error <= 2x PyTorch's error (``pt``, PyTorch's reference computed in the same dtype) plus a
    one-ulp-of-magnitude floor."""
    if got is None or ref64 is None:
        assert got is None and ref64 is None, f"{name}: one gradient is None"
        return
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    if dtype not in LOW_PRECISION:
        tol = (tolerances or {}).get(dtype, TOLERANCES[dtype])
        torch.testing.assert_close(got.double(), ref64.double(), **tol, msg=lambda m: f"{name}: {m}")
        return
    err, err_pt = max_err(got, ref64), max_err(pt, ref64)
    floor = torch.finfo(dtype).eps * (ref64.abs().max().item() if ref64.numel() else 0.0)
    print(f"{name}: max err {err:.3g}, PyTorch {dtype} err {err_pt:.3g}")
    assert err <= 2 * err_pt + floor, f"{name}: error {err:.3g} > 2 x PyTorch's {err_pt:.3g} + {floor:.3g}"


def grads(out, inputs, grad_out):
    """Gradients of <out, grad_out> w.r.t. inputs (None for inputs that are None)."""
    live = [t for t in inputs if t is not None]
    got = torch.autograd.grad(out, live, grad_out, allow_unused=True)
    it = iter(got)
    res = []
    for t in inputs:
        if t is None:
            res.append(None)
        else:
            g = next(it)
            res.append(torch.zeros_like(t) if g is None else g)
    return res


def upcast(tensors, dtype=torch.float64):
    return [None if t is None else t.detach().to(dtype).requires_grad_() for t in tensors]


def assert_grads_close(got: dict, want: dict, limit: float = 1e-4, what: str = "") -> None:
    """Each parameter's gradient within ``limit`` relative error (2-norm): gradients summed over thousands of
    sites in another order differ by rounding, so an elementwise tolerance would be either loose or flaky."""
    assert got.keys() == want.keys(), f"{what}: gradients of different parameters"
    for name in want:
        rel = ((got[name] - want[name]).norm() / want[name].norm().clamp_min(1e-12)).item()
        assert rel < limit, f"{what} {name}: relative gradient error {rel:.2e}"


def check_against_reference(name, fn, ref, inputs, dtype, grad_names, seed=7, tolerances=None):
    """``fn(*inputs)`` and its gradients against ``ref`` on the fp64 upcast (tight for fp32/fp64), and in low
    precision within 2x the error of ``ref`` run in ``dtype`` (PyTorch's own error). ``inputs`` require grad
    (None entries allowed); ``grad_names`` name them in messages."""
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out.device)
    got = grads(out, inputs, g.to(dtype))
    r = upcast(inputs)
    ref64 = ref(*r)
    ref_g = grads(ref64, r, g)
    pt, pt_g = None, [None] * len(inputs)
    if dtype in LOW_PRECISION:
        p = upcast(inputs, dtype)
        pt = ref(*p)
        pt_g = grads(pt, p, g.to(dtype))
    check_close(f"{name} y", out, ref64, pt, dtype, tolerances)
    for gname, a, b, c in zip(grad_names, got, ref_g, pt_g):
        check_close(f"{name} {gname}", a, b, c, dtype, tolerances)
