"""Every op of the op table x impl x mode (fwd, bwd, fwdbwd) x ConvNeXt V2 atto/tiny stage shape, beside the
baselines users have today, measured in the same run: one generated grid (a new op is benchmarked by declaring its
``BenchSpec``).

Per op (``mmearth_kernels/ops/<op>.py``): the rows are ``width`` x the stage's channels wide (4: the MLP's hidden
tensor); the impls are the op's own kernels available here (``triton-patches``: the patch-tiled Triton kernel), the
reference where ``time_ref`` says so, and the op's baselines (``bench.baselines``: what each is, in its docstring);
``report.py`` divides by ``bench.reference_baseline``. Bytes are the op's ideal traffic per row per mode (``OpSpec.
bytes``, the bytes model's), the same for every impl of a group, so GB/s compares impls directly.

One test function per op, ``test_<bench.name>`` (``gpu_check.sh`` selects ``bench_kernels.py::test_<name>``), with
the case ids of ``conftest.case_id``: ``test_grn[cpu-float32-atto-56px-C160-fwd-cpu]``.
"""

import pytest
import torch

from mmearth_kernels.ops.registry import OPS, Sample

from conftest import case_id, kernel_cases, stage_layout, time_mode


def bench_impls(spec, device: str) -> list[str]:
    """What is timed for ``spec`` on ``device``: its own kernels available here, the reference, the baselines."""
    avail = spec.available_impls(device)
    kernels = [i.label for i in spec.impls if i.fused and i.kind in avail]
    return kernels + (["ref"] if spec.bench.time_ref else []) + [b.name for b in spec.bench.baselines
                                                                 if b.when(device)]


def _forward(spec, label: str, inputs, kwargs, layout):
    impls = {i.label: i for i in spec.impls}
    if label in impls:
        return lambda: Sample(inputs, layout, (), kwargs, label).call(spec, impls[label])
    return next(b for b in spec.bench.baselines if b.name == label).build(inputs, layout)


def _benchmark(spec):
    @pytest.mark.parametrize("case", kernel_cases(lambda device: bench_impls(spec, device), spec.bench.width,
                                                  spec.bench.modes), ids=case_id)
    def test(case, timed, benchmark):
        dev, dtype, impl, model, res, C, mode = case
        benchmark.group = f"{spec.name} {dev} {str(dtype)[6:]} {model} {res}px C{C} {mode}"
        lay = stage_layout(res, dev)
        inputs, kwargs = spec.bench.inputs(lay.num_rows, C, torch.Generator().manual_seed(0))
        inputs = [t.to(dev, dtype).requires_grad_() for t in inputs]
        forward = _forward(spec, impl, inputs, kwargs, lay)
        g = torch.randn_like(forward())
        nc = lay.num_rows * C * inputs[0].element_size()
        time_mode(timed, mode, forward, g, dev, {m: spec.bytes_per_row(m) * nc for m in ("fwd", "bwd", "fwdbwd")},
                  op=spec.name, impl=impl, model=model, res=res, C=C, dtype=str(dtype)[6:])

    test.__name__ = test.__qualname__ = f"test_{spec.bench.name}"
    return test


for _spec in OPS.values():
    globals()[f"test_{_spec.bench.name}"] = _benchmark(_spec)
