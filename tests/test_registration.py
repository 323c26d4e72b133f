"""The extension is loaded and the dispatcher has the kernels the build promised."""

import os

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels import _extension

OPS = ["sparse_dwconv2d", "sparse_dwconv2d_backward", "grn", "grn_backward"]
# fused on CPU; on CUDA the Triton twin (or the unfused pair)
CPU_ONLY_OPS = ["gelu_grn", "gelu_grn_backward", "sparse_dwconv2d_ln"]
SCHEMAS = {
    "sparse_dwconv2d": "mmearth_kernels::sparse_dwconv2d(Tensor x, Tensor weight, Tensor? bias, Tensor row_pos, "
                       "Tensor inv_map) -> Tensor",
    "grn": "mmearth_kernels::grn(Tensor x, Tensor gamma, Tensor beta, Tensor offsets, float eps, bool batch_stats) "
           "-> (Tensor, Tensor)",
    "gelu_grn": "mmearth_kernels::gelu_grn(Tensor h, Tensor gamma, Tensor beta, Tensor offsets, float eps, "
                "bool batch_stats) -> (Tensor, Tensor)",
    "sparse_dwconv2d_ln": "mmearth_kernels::sparse_dwconv2d_ln(Tensor x, Tensor weight, Tensor? bias, "
                          "Tensor ln_weight, Tensor ln_bias, Tensor row_pos, Tensor inv_map, float eps) "
                          "-> (Tensor, Tensor, Tensor, Tensor)",
}


def test_extension_loaded():
    if os.environ.get("MMEARTH_NO_EXT") == "1":
        pytest.skip("MMEARTH_NO_EXT=1: pure-Python install on purpose")
    assert _extension.LOADED, f"mmearth_kernels._C did not load: {_extension.LOAD_ERROR}"


@pytest.mark.parametrize("op", OPS + CPU_ONLY_OPS)
def test_cpu_kernels_registered(op):
    assert _extension.has_kernel(op, "CPU")


@pytest.mark.parametrize("op", OPS)
def test_cuda_kernels_registered_iff_built_with_cuda(op):
    assert _extension.has_kernel(op, "CUDA") == mk.built_with_cuda()


@pytest.mark.parametrize("op", CPU_ONLY_OPS)
def test_cpu_only_ops_have_no_cuda_kernel(op):
    assert not _extension.has_kernel(op, "CUDA")


def test_build_had_cuda_when_required():
    """CI sets MMEARTH_REQUIRE_CUDA_BUILD=1: torch has CUDA and nvcc is installed, so the .cu files
    must have been compiled (a .cu that does not compile must fail CI, not be skipped)."""
    if os.environ.get("MMEARTH_REQUIRE_CUDA_BUILD") != "1":
        pytest.skip("MMEARTH_REQUIRE_CUDA_BUILD is not set (only CI demands the CUDA build)")
    assert torch.version.cuda, "torch was built without CUDA"
    assert mk.built_with_cuda(), "the extension was built without its CUDA sources"


@pytest.mark.parametrize("op", sorted(SCHEMAS))
def test_schemas_unchanged(op):
    assert str(getattr(torch.ops.mmearth_kernels, op).default._schema) == SCHEMAS[op]


def test_info_runs(capsys):
    from mmearth_kernels import info

    info.main()
    out = capsys.readouterr().out
    assert "extension" in out and "sparse_dwconv2d" in out and "grn" in out
