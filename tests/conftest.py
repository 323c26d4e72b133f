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
