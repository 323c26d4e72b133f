"""The CUDA depthwise weight gradient (csrc/cuda/sparse_dwconv.cu: a block per part and 32 channels, the part's rows
split across the block's warps, the warps' sums added in a fixed order through shared memory) on the shapes where
that design matters: many parts, rows per part not a multiple of the warps, C that leaves a partial channel block,
the compiled K = 3, 5, 7 and the generic K. Against the CPU kernel in fp64, and deterministic (bit-identical twice).

GPU only: here every case skips with the reason; the GPU session runs them."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels import _extension

OP = torch.ops.mmearth_kernels
HAS_CUDA_KERNEL = torch.cuda.is_available() and _extension.LOADED and _extension.has_kernel("sparse_dwconv2d", "CUDA")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not HAS_CUDA_KERNEL, reason="needs a CUDA GPU and the CUDA build of "
                                                             "mmearth_kernels._C (runs in the GPU session)")]


def _case(batch, res, C, K, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = mk.random_patch_mask(batch, 7, 0.6, generator=g)
    lay = mk.build_layout(mask, res, mk.num_kept(49, 0.6))
    x = torch.randn(lay.num_rows, C, generator=g, dtype=torch.float64)
    w = torch.randn(C, 1, K, K, generator=g, dtype=torch.float64) / K
    dy = torch.randn(lay.num_rows, C, generator=g, dtype=torch.float64)
    return lay, x.to(dtype), w.to(dtype), dy.to(dtype)


def _grads(dev, lay, x, w, dy):
    return OP.sparse_dwconv2d_backward(dy.to(dev), x.to(dev), w.to(dev), lay.row_pos.to(dev), lay.inv_map.to(dev),
                                       [False, True, True])[1:]


# (batch, resolution, C, K): 64 x 19 x 64 rows at 56 px = 77,824 rows -> 256 parts of ~304 rows (not a multiple of
# the 8 warps); C = 40 and 37 leave a partial second channel block; K = 9 and 1 take the generic kernel.
CASES = [(64, 56, 40, 7), (8, 28, 80, 7), (4, 14, 37, 5), (16, 7, 33, 3), (4, 28, 40, 9), (2, 14, 65, 1)]


@pytest.mark.parametrize("batch, res, C, K", CASES)
def test_weight_gradient_matches_the_cpu_kernel_in_fp64(batch, res, C, K):
    lay, x, w, dy = _case(batch, res, C, K, torch.float64)
    want_w, want_b = _grads("cpu", lay, x, w, dy)
    got_w, got_b = _grads("cuda", lay, x, w, dy)
    torch.testing.assert_close(got_w.cpu(), want_w, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got_b.cpu(), want_b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_gradient_is_deterministic_and_close_in_low_precision(dtype):
    lay, x, w, dy = _case(64, 56, 40, 7, dtype, seed=1)
    first = _grads("cuda", lay, x, w, dy)
    again = _grads("cuda", lay, x, w, dy)
    assert all(torch.equal(a, b) for a, b in zip(first, again)), "the weight gradient changed between two calls"
    want_w, want_b = _grads("cpu", lay, x.double(), w.double(), dy.double())
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(first[0].double().cpu(), want_w, rtol=tol, atol=tol * want_w.abs().max().item())
    torch.testing.assert_close(first[1].double().cpu(), want_b, rtol=tol, atol=tol * want_b.abs().max().item())
