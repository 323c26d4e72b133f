"""Kernel demo: the sparse encoder's two hot ops on ConvNeXt V2 atto stage shapes, against what users have today
(each op's benchmark baseline: the dense depthwise conv with the mask applied before and after; eager GRN).

    python -m mmearth_kernels.demo [--batch 64] [--mask-ratio 0.6] [--repeats 5]

It checks each result against the pure-PyTorch reference, then times forward+backward side by
side. For the numbers behind the README use the benchmarks (benchmarks/README.md).
"""

import argparse
import time

import torch

import mmearth_kernels as mk
from mmearth_kernels.ops.registry import OPS
from mmearth_kernels.testing import atto_stage_shapes

# The sparse encoder's two hot ops (the others are their fusions); each against its op's benchmark baseline
DEMO_OPS = ("sparse_dwconv2d", "grn")


def median_ms(fn, repeats, device):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1e3 * sorted(times)[len(times) // 2]


def op_call(spec, inputs, layout, impl, kwargs):
    return lambda: spec.fn(*inputs, layout, impl=impl, **kwargs)


def fwd_bwd(forward, grad):
    return lambda: forward().backward(grad)


def show_mask(mask):
    print("FCMAE patch mask of sample 0 (# = masked, . = kept):")
    for row in mask[0].tolist():
        print("   " + " ".join("#" if m else "." for m in row))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="images per batch (default 64, as FCMAE per GPU)")
    ap.add_argument("--mask-ratio", type=float, default=0.6, help="FCMAE mask ratio (0.6 keeps 19 of 49 patches)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per case (median is shown)")
    ap.add_argument("--impl", default="auto", choices=mk.IMPLS, help="implementation of the sparse ops")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        ap.error("--batch and --repeats must be >= 1")
    dev = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    mask = mk.random_patch_mask(args.batch, 7, args.mask_ratio, generator=gen)
    kept = mk.num_kept(49, args.mask_ratio)
    print(f"batch {args.batch}, {kept} of 49 patches kept ({100 * (49 - kept) / 49:.1f} % masked), device {dev}, "
          f"impl {args.impl}, {torch.get_num_threads()} CPU threads")
    show_mask(mask)
    print()
    header = f"{'stage':<14}{'rows':>8}  {'op':<26}{'ours ms':>9}{'baseline ms':>13}{'speed-up':>10}  check"
    print(header)
    print("-" * len(header))
    for res, C in atto_stage_shapes():
        lay = mk.build_layout(mask.to(dev), res, kept)
        for name in DEMO_OPS:
            spec = OPS[name]
            width = spec.bench.width * C
            inputs, kw = spec.bench.inputs(lay.num_rows, width, gen)
            inputs = [t.to(dev).requires_grad_() for t in inputs]
            ours = op_call(spec, inputs, lay, args.impl, kw)
            err = (ours() - op_call(spec, inputs, lay, "ref", kw)()).abs().max().item()
            ok = "ok" if err < 1e-4 else f"MISMATCH {err:.2g}"
            base = next(b for b in spec.bench.baselines if b.name == spec.bench.reference_baseline)
            baseline = base.build(inputs, lay)
            t_ours = median_ms(fwd_bwd(ours, torch.randn_like(ours())), args.repeats, dev)
            t_base = median_ms(fwd_bwd(baseline, torch.randn_like(baseline())), args.repeats, dev)
            stage = f"{res:>3}px C={C:<7}" if name == DEMO_OPS[0] else ""
            rows = f"{lay.num_rows:>8}" if name == DEMO_OPS[0] else f"{'':>8}"
            print(f"{stage:<14}{rows}  {f'{name} C={width} f+b':<26}{t_ours:>9.2f}{t_base:>13.2f}"
                  f"{t_base / t_ours:>9.2f}x  {ok}")
    print("\nbaselines (benchmarks/README.md): " + ", ".join(f"{n}: {OPS[n].bench.reference_baseline}"
                                                           for n in DEMO_OPS))


if __name__ == "__main__":
    main()
