"""The C++ CPU kernels really run on torch's threads, and the thread count never changes a result.

at::parallel_for is a header template: an extension compiled without -fopenmp runs it on one thread,
silently, whatever torch.get_num_threads() says (ours did until setup.py added the flag)."""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels import _extension
from mmearth_kernels._constants import GRN_ROWS_PER_PART
from mmearth_kernels.testing import MASK_CASES, grn_samples

from conftest import requires_ext

OP = torch.ops.mmearth_kernels


class _threads:
    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


@requires_ext
@pytest.mark.parametrize("n", [1, 2, 3])
def test_parallel_for_runs_on_torchs_threads(n):
    with _threads(n):
        assert _extension.cpu_threads_used() == n


def _grn_all(x, gamma, beta, lay, g, batch_stats):
    y, gnorm = OP.grn(x, gamma, beta, lay.offsets, 1e-6, batch_stats)
    grads = OP.grn_backward(g, x, gamma, gnorm, lay.offsets, 1e-6, batch_stats, [True, True, True])
    return (y, gnorm, *grads)


@requires_ext
@pytest.mark.parametrize("batch_stats", [False, True], ids=["per-sample", "batch-stats"])
def test_grn_schedules_give_identical_bits(batch_stats):
    """One thread with >= 2 samples runs one task per sample (stats and apply while the sample is in cache);
    more threads than samples / 2 run the two-pass schedule over parts. Same parts, same order: same bits."""
    gen = torch.Generator().manual_seed(3)
    # 1216 rows per sample: several statistics parts per sample (GRN_ROWS_PER_PART), odd C.
    lay = mk.build_layout(mk.random_patch_mask(3, 7, 0.6, generator=gen), 56, 19)
    assert lay.num_rows // 3 > 2 * GRN_ROWS_PER_PART
    samples = [(lay, 45)] + [(s.layout, s.x.shape[1]) for s in grn_samples("cpu", cases=[MASK_CASES[3]])]
    for lay, C in samples:
        B = lay.batch_size
        assert B >= 2, "the case must have samples enough for the per-sample schedule"
        x, g = torch.randn(2, lay.num_rows, C, generator=gen)
        gamma, beta = torch.randn(2, C, generator=gen)
        with _threads(1):
            one = _grn_all(x, gamma, beta, lay, g, batch_stats)
        with _threads(B):  # 2 * threads > samples: the two-pass schedule
            many = _grn_all(x, gamma, beta, lay, g, batch_stats)
        for name, a, b in zip(("y", "gnorm", "dx", "dgamma", "dbeta"), one, many):
            assert torch.equal(a, b), f"B={B} C={C} {name}: the schedules differ"
