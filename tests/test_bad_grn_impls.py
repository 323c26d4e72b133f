"""The C++ GRN ops refuse bad input the same way on every device (issue 28 item 7): one table of cases, run against
the CPU kernel here and the CUDA kernel on a GPU machine, with the same message for each.

Direct op calls (``torch.ops.mmearth_kernels.grn``), so the C++ checks (csrc/checks.h, shared by both kernels) are
what is tested, not the Python wrapper's. Everything that needs no read of device memory is checked on both
(shapes, dtypes, devices, contiguity, eps, sizes). The *values* of the offsets are refused on CPU only: reading them
on CUDA would be a host sync in every call, so there the kernels clamp each group's rows into [0, N]; the CUDA cases
of those values check that the call never faults instead (docs/architecture.md, "How to add an op", step 2).
"""

import pytest
import torch

from mmearth_kernels import _extension

OP = torch.ops.mmearth_kernels
N_PER_SAMPLE, BATCH, C = 5, 2, 8
EPS = 1e-6


def _impls():
    """(impl, device) params: the CPU kernel, and the CUDA kernel, which skips with the reason where it cannot run."""
    cuda_skip = (None if torch.cuda.is_available() and _extension.LOADED and _extension.has_kernel("grn", "CUDA")
                 else "needs a CUDA GPU and the CUDA build of mmearth_kernels._C (runs in the GPU session)")
    cuda_marks = [pytest.mark.cuda] + ([pytest.mark.skip(reason=cuda_skip)] if cuda_skip else [])
    return [pytest.param("cpu", marks=pytest.mark.skipif(not _extension.LOADED, reason="mmearth_kernels._C not built")),
            pytest.param("cuda", marks=cuda_marks)]


def _other_device(dev: str):
    """A second device for the device-mismatch cases, or None. Not "meta": a meta tensor among the arguments sends
    the call to the op's fake kernel, which checks nothing on devices."""
    if dev == "cuda":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else None


def _needs_other(name: str, dev: str):
    if "device" in name and _other_device(dev) is None:
        pytest.skip("a device mismatch on CPU needs a second device (a GPU); the CUDA case checks the same message")


def _inputs(dev):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH * N_PER_SAMPLE, C, generator=g).to(dev)
    gamma = torch.randn(C, generator=g).to(dev)
    beta = torch.randn(C, generator=g).to(dev)
    offsets = (torch.arange(BATCH + 1, dtype=torch.int32) * N_PER_SAMPLE).to(dev)
    kw = dict(x=x, gamma=gamma, beta=beta, offsets=offsets, eps=EPS, batch_stats=False)
    _, kw["gnorm"] = _call("grn", kw)  # what the backward takes: the forward's statistics and a gradient
    kw["grad_out"] = torch.randn(x.shape, generator=g).to(dev)
    return kw


# name: (change to the valid inputs, the message; {dev} and {other} are the two devices of the case)
FORWARD_CASES = {
    "x 3-D": (lambda k, o: dict(x=k["x"][None]), r"grn: x must be 2-D \[N, C\]"),
    "x integer": (lambda k, o: dict(x=k["x"].long()), "grn: x must be float32, float64, float16 or bfloat16, got Long"),
    "x not contiguous": (lambda k, o: dict(x=k["x"].t().contiguous().t()), r"grn: x must be contiguous"),
    "gamma dtype": (lambda k, o: dict(gamma=k["gamma"].double()), "grn: gamma has dtype Double but x has dtype Float"),
    "gamma size": (lambda k, o: dict(gamma=k["gamma"][:-1]), r"grn: gamma must be a contiguous \[8\] tensor"),
    "gamma not contiguous": (lambda k, o: dict(gamma=k["gamma"].repeat(2)[::2]),
                             r"grn: gamma must be a contiguous \[8\] tensor"),
    "gamma device": (lambda k, o: dict(gamma=k["gamma"].to(o)), "grn: gamma is on {other} but x is on {dev}"),
    "beta size": (lambda k, o: dict(beta=k["beta"].repeat(2)), r"grn: beta must be a contiguous \[8\] tensor"),
    "beta dtype": (lambda k, o: dict(beta=k["beta"].half()), "grn: beta has dtype Half but x has dtype Float"),
    "offsets int64": (lambda k, o: dict(offsets=k["offsets"].long()), "grn: offsets must be int32, got Long"),
    "offsets 2-D": (lambda k, o: dict(offsets=k["offsets"][None]), "grn: offsets must be 1-D"),
    "offsets not contiguous": (lambda k, o: dict(offsets=k["offsets"].repeat(2)[::2]),
                               "grn: offsets must be contiguous"),
    "offsets device": (lambda k, o: dict(offsets=k["offsets"].to(o)), "grn: offsets is on {other} but x is on {dev}"),
    "offsets one entry": (lambda k, o: dict(offsets=k["offsets"][:1]), r"grn: offsets must have B \+ 1 >= 2 entries"),
    "eps negative": (lambda k, o: dict(eps=-1.0), "grn: eps must be >= 0, got -1"),
    "eps nan": (lambda k, o: dict(eps=float("nan")), "grn: eps must be >= 0, got nan"),
}

BACKWARD_CASES = {
    "grad_out shape": (lambda k, o: dict(grad_out=k["grad_out"][:-1]), "grn_backward: grad_out must have the shape"),
    "grad_out dtype": (lambda k, o: dict(grad_out=k["grad_out"].double()),
                       "grn_backward: grad_out has dtype Double but x has dtype Float"),
    "grad_out device": (lambda k, o: dict(grad_out=k["grad_out"].to(o)),
                        "grn_backward: grad_out is on {other} but x is on {dev}"),
    "gnorm shape": (lambda k, o: dict(gnorm=k["gnorm"][:1]),
                    r"grn_backward: gnorm must be the \[2, 8\] Float statistics returned by grn"),
    "gnorm dtype": (lambda k, o: dict(gnorm=k["gnorm"].half()),
                    r"grn_backward: gnorm must be the \[2, 8\] Float statistics returned by grn"),
    "gnorm of batch statistics": (lambda k, o: dict(batch_stats=True),
                                  r"grn_backward: gnorm must be the \[1, 8\] Float statistics"),
    "x integer": (lambda k, o: dict(x=k["x"].long(), grad_out=k["grad_out"].long()),
                  "grn: x must be float32, float64, float16 or bfloat16, got Long"),
    "eps negative": (lambda k, o: dict(eps=-0.5), "grn: eps must be >= 0, got -0.5"),
}


def _message(template: str, dev: str) -> str:
    return template.format(dev=dev, other=_other_device(dev))


CASES = {**{("grn", name): case for name, case in FORWARD_CASES.items()},
         **{("grn_backward", name): case for name, case in BACKWARD_CASES.items()}}


def _call(op: str, kw: dict):
    if op == "grn":
        return OP.grn(kw["x"], kw["gamma"], kw["beta"], kw["offsets"], kw["eps"], kw["batch_stats"])
    return OP.grn_backward(kw["grad_out"], kw["x"], kw["gamma"], kw["gnorm"], kw["offsets"], kw["eps"],
                           kw["batch_stats"], [True, True, True])


@pytest.mark.parametrize("op, name", sorted(CASES), ids=lambda v: v.replace(" ", "_"))
@pytest.mark.parametrize("dev", _impls())
def test_bad_input_is_refused_alike(dev, op, name):
    change, message = CASES[(op, name)]
    _needs_other(name, dev)
    kw = _inputs(dev)
    kw.update(change(kw, _other_device(dev)))
    with pytest.raises(RuntimeError, match=_message(message, dev)):
        _call(op, kw)


# Offsets whose values do not bound the rows: refused on CPU; on CUDA (no host read) clamped, never a fault.
OFFSET_VALUE_CASES = {
    "end past N": (lambda off: off.index_put_((torch.tensor(-1),), off[-1] + 3),
                   "offsets must start at 0 and end at N"),
    "start not 0": (lambda off: off.index_put_((torch.tensor(0),), torch.tensor(1, dtype=torch.int32)),
                    "offsets must start at 0 and end at N"),
    "decreasing": (lambda off: off.index_put_((torch.tensor(1),), off[2] + 1), "offsets must be non-decreasing"),
}


@pytest.mark.parametrize("name", sorted(OFFSET_VALUE_CASES))
@pytest.mark.parametrize("dev", _impls())
def test_grn_offset_values(dev, name):
    change, message = OFFSET_VALUE_CASES[name]
    kw = _inputs(dev)
    off = change(kw["offsets"].cpu().clone()).to(dev)
    call = (kw["x"], kw["gamma"], kw["beta"], off, kw["eps"], kw["batch_stats"])
    if dev == "cpu":
        with pytest.raises(RuntimeError, match=f"grn: {message}"):
            OP.grn(*call)
        return
    y, gnorm = OP.grn(*call)  # no host read of the offsets: each group's rows clamped into [0, N]
    grads = _call("grn_backward", {**kw, "offsets": off, "gnorm": gnorm})
    torch.cuda.synchronize()  # an access outside x would surface here (illegal address)
    assert y.shape == kw["x"].shape and grads[0].shape == kw["x"].shape
    if name == "end past N":  # clamped to N: exactly the valid call
        want, _ = _call("grn", kw)
        torch.testing.assert_close(y, want, rtol=0, atol=0)
