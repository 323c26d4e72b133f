"""Per-call host cost of each way an op can be registered, at a tiny size (the kernel's own time is
negligible, so the difference between paths is dispatch and autograd overhead, the cost an eager GPU
step pays per call).

The same C++ CPU sparse depthwise kernel (8 rows x 8 channels, 3x3) is reached through:

* ``aten_add``: a plain aten op of the same size, for scale;
* ``raw_op``: ``torch.ops.mmearth_kernels.sparse_dwconv2d`` (C++ schema, autograd from ``register_autograd``);
* ``public``: ``mk.sparse_dwconv2d(impl="cpu")``, i.e. raw_op plus our Python argument checks;
* ``custom_op``: a ``torch.library.custom_op`` with ``register_autograd`` around the same kernel, as the
  Triton ops are registered today;
* ``define_impl``: ``torch.library.define`` + ``impl`` (no autograd kernel) called inside a
  ``torch.autograd.Function``, the registration the GPU-performance notes suggest as cheaper.

Each with ``requires_grad`` False (forward only) and True (forward + backward).

    cd benchmarks && python -m pytest bench_dispatch.py --benchmark-only
"""

import pytest
import torch

import mmearth_kernels as mk
from mmearth_kernels import _extension

from conftest import CONTEXT

pytestmark = pytest.mark.skipif(not _extension.LOADED, reason="the C++ extension is not built: nothing to measure")

_LIB = "mmk_bench"
_registered = {}


def _register():
    """Benchmark-only ops in their own namespace (never in the library's)."""
    if _registered:
        return _registered
    kernel = torch.ops.mmearth_kernels.sparse_dwconv2d
    backward = torch.ops.mmearth_kernels.sparse_dwconv2d_backward

    @torch.library.custom_op(f"{_LIB}::dw_custom", mutates_args=())
    def dw_custom(x: torch.Tensor, w: torch.Tensor, rp: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
        return kernel(x, w, None, rp, im)

    @torch.library.custom_op(f"{_LIB}::dw_custom_bwd", mutates_args=())
    def dw_custom_bwd(g: torch.Tensor, x: torch.Tensor, w: torch.Tensor, rp: torch.Tensor, im: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return backward(g, x, w, rp, im, [True, True, False])

    def setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def bwd(ctx, grad):
        x, w, rp, im = ctx.saved_tensors
        dx, dw, _ = dw_custom_bwd(grad.contiguous(), x, w, rp, im)
        return dx, dw, None, None

    dw_custom.register_autograd(bwd, setup_context=setup)

    lib = torch.library.Library(_LIB, "FRAGMENT")
    lib.define("dw_plain(Tensor x, Tensor w, Tensor rp, Tensor im) -> Tensor")
    lib.define("dw_plain_bwd(Tensor g, Tensor x, Tensor w, Tensor rp, Tensor im) -> (Tensor, Tensor, Tensor)")
    lib.impl("dw_plain", lambda x, w, rp, im: kernel(x, w, None, rp, im), "CPU")
    lib.impl("dw_plain_bwd", lambda g, x, w, rp, im: backward(g, x, w, rp, im, [True, True, False]), "CPU")
    plain, plain_bwd = torch.ops.mmk_bench.dw_plain, torch.ops.mmk_bench.dw_plain_bwd

    class DwFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w, rp, im):
            ctx.save_for_backward(x, w, rp, im)
            return plain(x, w, rp, im)

        @staticmethod
        def backward(ctx, grad):
            x, w, rp, im = ctx.saved_tensors
            dx, dw, _ = plain_bwd(grad.contiguous(), x, w, rp, im)
            return dx, dw, None, None

    _registered.update(lib=lib, custom=torch.ops.mmk_bench.dw_custom, function=DwFunction.apply)
    return _registered


PATHS = ["aten_add", "raw_op", "public", "custom_op", "define_impl"]


@pytest.mark.parametrize("grad", [False, True], ids=["fwd", "fwdbwd"])
@pytest.mark.parametrize("path", PATHS)
def test_dispatch_cost(path, grad, benchmark):
    ops = _register()
    mask = torch.zeros(2, 2, 2, dtype=torch.bool)
    mask[:, 1, 1] = True
    lay = mk.build_layout(mask, 4, 3)  # 2 samples x 3 kept 2x2 patches... at 4x4: 24 rows
    x = torch.randn(lay.num_rows, 8, requires_grad=grad)
    w = torch.randn(8, 1, 3, 3, requires_grad=grad)
    rp, im = lay.row_pos, lay.inv_map
    call = {
        "aten_add": lambda: torch.add(x, x),
        "raw_op": lambda: torch.ops.mmearth_kernels.sparse_dwconv2d(x, w, None, rp, im),
        "public": lambda: mk.sparse_dwconv2d(x, w, None, lay, impl="cpu"),
        "custom_op": lambda: ops["custom"](x, w, rp, im),
        "define_impl": lambda: ops["function"](x, w, rp, im),
    }[path]

    def run():
        y = call()
        if grad:
            y.sum().backward()
        return y

    benchmark.group = f"host cost per call ({'forward + backward' if grad else 'forward'}), tiny size, CPU"
    benchmark.extra_info.update(CONTEXT, kind="dispatch", path=path, grad=grad, rows=lay.num_rows, channels=8)
    benchmark.pedantic(run, rounds=2000, warmup_rounds=200, iterations=1)
