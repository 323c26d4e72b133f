import os

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels import _extension

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_report_header(config):
    return (f"torch {torch.__version__}, extension loaded: {mk.EXTENSION_LOADED}, built with CUDA: "
            f"{mk.built_with_cuda()}, CUDA device: {HAS_CUDA}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}")


def cpu_impls(op):
    """The concrete CPU impls to test against the reference; 'cpu' must exist unless the build skipped it."""
    impls = [i for i in mk.available_impls(op, "cpu") if i != "ref"]
    return impls


requires_ext = pytest.mark.skipif(not _extension.LOADED,
                                  reason="mmearth_kernels._C is not built (MMEARTH_NO_EXT?); compiled impls untested")
requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine; CUDA kernels compiled, not run")


def device_impls(op):
    """(device, impl) params for every compiled impl; CUDA cases skip visibly without a GPU."""
    params = [pytest.param("cpu", i, id=f"cpu-{i}") for i in cpu_impls(op)]
    if HAS_CUDA:
        params += [pytest.param("cuda", i, id=f"cuda-{i}") for i in mk.available_impls(op, "cuda") if i != "ref"]
    else:
        params.append(pytest.param("cuda", "cuda", id="cuda-cuda",
                                   marks=pytest.mark.skip(reason="no CUDA GPU: CUDA kernels compiled, not run")))
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
