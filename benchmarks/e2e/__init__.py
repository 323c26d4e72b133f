"""End-to-end MP-MAE training-step throughput: the sparse backends against the dense baselines, side by side.

    python -m benchmarks.e2e                                   # the quick grid for this device
    python -m benchmarks.e2e --backends {baselines},{default} --sizes atto,tiny --mask-ratios 0,0.4,0.6,0.75 \\
        --precisions fp32,bf16 --geometries 56/8,112/16 --batch 32
    python -m benchmarks.e2e --device cuda --backends {default}-graphed,{reference}-graphed --batch 256,1024
    python -m benchmarks.e2e --compare benchmarks/results/e2e-<earlier>.json
    python -m benchmarks.e2e --profile --backends {reference},{default}   # torch.profiler table + Chrome trace
    python -m benchmarks.e2e --scaling                         # kept fraction, batch and width sweeps
    python -m benchmarks.e2e --smoke                           # CI: tiny batch, one repeat, every output

One step is the trainer's own (``train.step.TrainStep``): forward of the full MP-MAE (all 12 tasks by
default), backward, fused AdamW over the trainer's parameter groups, on a synthetic in-memory batch (no
data loading). Each case: fresh model (same seed, so the same weights on every backend), ``--warmup``
untimed steps (compilation happens there; graphed cases also run their eager warm-up and the capture
there), then the median of ``--repeats`` timed steps (synchronised on CUDA), then one more step counted:
ops dispatched on any device, and on CUDA kernels, host launch calls and summed kernel time from a
profiler trace. Memory: peak allocated on GPU; on CPU the process's peak resident set during the case
(Linux VmHWM, reset per case) above its resident set when the case began. ``--host-cost`` (on by
default) adds each eager backend at batch 1: host ms/step and ops per step, the launch-bound regime.

Backends (the backend registry, ``mmearth_kernels.models.registry``): {backends}; those running this library's
kernels also as ``<backend>-<impl>`` ({impls}); each followed by ``-compiled`` (torch.compile) and/or ``-graphed``
(the whole step replayed from CUDA graphs, GPU only; on CPU such rows are listed as skipped, with the reason).

Writes ``<out>/<name>.json`` (full context and every case), ``<name>.md`` (the table, ratios to the dense
baselines measured in the same run) and ``<name>-throughput.png`` / ``<name>-memory.png``.
"""

from mmearth_kernels.models.registry import BACKEND_SPECS, baseline_backends, default_backend, reference_backend
from mmearth_kernels.ops.registry import KINDS

from .cases import Backend, Case, available_backends, parse_backend, quick_grid  # noqa: F401
from .report import linear_fit, scaling_fits  # noqa: F401
from .run import build, run_case  # noqa: F401


__doc__ = __doc__.format(
    baselines=",".join(baseline_backends()), default=default_backend(), reference=reference_backend(),
    backends="; ".join(f"``{s.name}`` ({s.summary})" for s in BACKEND_SPECS.values()), impls=", ".join(KINDS))


def main(argv=None) -> dict:
    from .cli import main as _main

    return _main(argv, doc=__doc__)
