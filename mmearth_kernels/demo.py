"""Kernel demo: the sparse encoder's two hot ops on ConvNeXt V2 atto stage shapes, against what
users have today (dense depthwise conv with the mask applied before and after; eager GRN).

    python -m mmearth_kernels.demo [--batch 64] [--mask-ratio 0.6] [--repeats 5]

It checks each result against the pure-PyTorch reference, then times forward+backward side by
side. For the numbers behind the README use the benchmarks (benchmarks/README.md).
"""

import argparse
import time

import torch
import torch.nn.functional as F

import mmearth_kernels as mk
from mmearth_kernels.reference import grn_dense_eager
from mmearth_kernels.testing import atto_stage_shapes


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
    header = f"{'stage':<14}{'rows':>8}  {'op':<16}{'ours ms':>9}{'baseline ms':>13}{'speed-up':>10}  check"
    print(header)
    print("-" * len(header))
    for res, C in atto_stage_shapes():
        lay = mk.build_layout(mask.to(dev), res, kept)
        x = torch.randn(lay.num_rows, C, generator=gen).to(dev).requires_grad_()
        w = (torch.randn(C, 1, 7, 7, generator=gen) / 7).to(dev).requires_grad_()
        b = torch.randn(C, generator=gen).to(dev).requires_grad_()
        err = (mk.sparse_dwconv2d(x, w, b, lay, impl=args.impl) - mk.sparse_dwconv2d(x, w, b, lay, impl="ref"))
        ok = "ok" if err.abs().max().item() < 1e-4 else f"MISMATCH {err.abs().max().item():.2g}"
        g = torch.randn(lay.num_rows, C, generator=gen).to(dev)
        xd = mk.to_dense(x.detach(), lay).contiguous(memory_format=torch.channels_last).requires_grad_()
        m = lay.active()[:, None].float().contiguous(memory_format=torch.channels_last)
        gd = mk.to_dense(g, lay).contiguous(memory_format=torch.channels_last)
        ours = median_ms(lambda: mk.sparse_dwconv2d(x, w, b, lay, impl=args.impl).backward(g), args.repeats, dev)
        dense = median_ms(lambda: (F.conv2d(xd * m, w, b, padding=3, groups=C) * m).backward(gd), args.repeats, dev)
        print(f"{res:>3}px C={C:<7}{lay.num_rows:>8}  {'dwconv7x7 f+b':<16}{ours:>9.2f}{dense:>13.2f}"
              f"{dense / ours:>9.2f}x  {ok}")
        C4 = 4 * C
        h = torch.randn(lay.num_rows, C4, generator=gen).to(dev).requires_grad_()
        gamma = torch.randn(C4, generator=gen).to(dev).requires_grad_()
        beta = torch.randn(C4, generator=gen).to(dev).requires_grad_()
        err = mk.grn(h, gamma, beta, lay, impl=args.impl) - mk.grn(h, gamma, beta, lay, impl="ref")
        ok = "ok" if err.abs().max().item() < 1e-4 else f"MISMATCH {err.abs().max().item():.2g}"
        gh = torch.randn(lay.num_rows, C4, generator=gen).to(dev)
        he = h.detach().view(args.batch, -1, 1, C4).requires_grad_()
        ours = median_ms(lambda: mk.grn(h, gamma, beta, lay, impl=args.impl).backward(gh), args.repeats, dev)
        eager = median_ms(lambda: grn_dense_eager(he, gamma, beta).backward(gh.view_as(he)), args.repeats, dev)
        print(f"{'':<14}{'':>8}  {f'GRN C={C4} f+b':<16}{ours:>9.2f}{eager:>13.2f}{eager / ours:>9.2f}x  {ok}")
    print("\nbaselines: dense channels_last conv2d(groups=C) masked before and after; eager ConvNeXt V2 GRN "
          "on the same rows.")


if __name__ == "__main__":
    main()
