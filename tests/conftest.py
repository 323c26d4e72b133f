import os

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels import _extension
from mmearth_kernels import triton_kernels as _triton

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_report_header(config):
    return (f"torch {torch.__version__}, extension loaded: {mk.EXTENSION_LOADED}, built with CUDA: "
            f"{mk.built_with_cuda()}, CUDA device: {HAS_CUDA}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}")


def cpu_impls(op):
    """The compiled CPU impls to test against the reference ('cpu'; 'triton' under the interpreter)."""
    return [i for i in mk.available_impls(op, "cpu") if i != "ref"]


requires_ext = pytest.mark.skipif(not _extension.LOADED,
                                  reason="mmearth_kernels._C is not built (MMEARTH_NO_EXT?); compiled impls untested")
NO_GPU = "no CUDA GPU here: the CUDA and Triton GPU cases need one (benchmarks/gpu_check.sh runs them)"
NO_INTERPRETER = "Triton on CPU needs TRITON_INTERPRET=1 before import (scripts/test.sh runs it as its own step)"


def impl_device(kind: str) -> str:
    """Where an impl kind is tested on this machine: Triton on the GPU when there is one, else on CPU tensors under
    the interpreter."""
    return "cuda" if kind == "cuda" or (kind == "triton" and HAS_CUDA) else "cpu"


def impl_marks(spec, kind: str, device: str) -> list:
    """The ``triton``/``cuda`` markers of an (op, impl kind, device) case (CI runs the Triton ones in a separate
    ``TRITON_INTERPRET=1 pytest -m triton`` step), and a skip saying why when it cannot run here: never silently
    dropped."""
    marks = ([pytest.mark.triton] if kind == "triton" else []) + ([pytest.mark.cuda] if device == "cuda" else [])
    if device == "cuda" and not HAS_CUDA:
        return marks + [pytest.mark.skip(reason=NO_GPU)]
    if kind == "triton" and not _triton.INTERPRET and device == "cpu":
        return marks + [pytest.mark.skip(reason=NO_INTERPRETER)]
    why = spec.why_unavailable(kind, device)
    return marks + ([pytest.mark.skip(reason=f"{spec.name}: {why}")] if why else [])


def device_impls(op):
    """(device, impl) params for every compiled impl kind of ``op`` (from the op table), each with its markers and,
    where it cannot run here, a skip saying why."""
    spec = mk.ops.OPS[op]
    return [pytest.param(impl_device(kind), kind, id=f"{impl_device(kind)}-{kind}",
                         marks=impl_marks(spec, kind, impl_device(kind))) for kind in spec.kinds if kind != "ref"]


@pytest.fixture
def poison(request):
    """On CUDA, fill every uninitialised allocation with NaN so unwritten output elements are caught."""
    device = request.node.callspec.params.get("device", "cpu") if hasattr(request.node, "callspec") else "cpu"
    if device != "cuda":
        yield
        return
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill
