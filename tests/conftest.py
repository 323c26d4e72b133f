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


def device_impls(op):
    """(device, impl) params for every compiled impl. Triton cases carry the ``triton`` marker (CI
    runs them in a separate ``TRITON_INTERPRET=1 pytest -m triton`` step); cases that cannot run on
    this machine are listed as skips with the reason, never silently dropped."""
    params = [pytest.param("cpu", i, id=f"cpu-{i}") for i in cpu_impls(op) if i != "triton"]
    no_gpu = pytest.mark.skip(reason="no CUDA GPU here: the CUDA and Triton GPU cases need one "
                                     "(benchmarks/gpu_check.sh runs them)")
    if _triton.INTERPRET:
        params.append(pytest.param("cpu", "triton", id="cpu-triton", marks=pytest.mark.triton))
    else:
        params.append(pytest.param("cpu", "triton", id="cpu-triton", marks=[pytest.mark.triton, pytest.mark.skip(
            reason="Triton on CPU needs TRITON_INTERPRET=1 before import (scripts/test.sh runs it as its own step)")]))
    if HAS_CUDA:
        for i in mk.available_impls(op, "cuda"):
            if i != "ref":
                params.append(pytest.param("cuda", i, id=f"cuda-{i}", marks=[pytest.mark.cuda] + (
                    [pytest.mark.triton] if i == "triton" else [])))
    else:
        params.append(pytest.param("cuda", "cuda", id="cuda-cuda", marks=[pytest.mark.cuda, no_gpu]))
        params.append(pytest.param("cuda", "triton", id="cuda-triton", marks=[pytest.mark.cuda, pytest.mark.triton,
                                                                              no_gpu]))
    return params


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
