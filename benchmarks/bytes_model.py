"""Bytes moved by one ConvNeXt V2 block on the packed sparse layout, per op, forward and backward: today's
schedule and the fused one issue 17 proposes. ``python -m benchmarks.bytes_model`` prints the tables of
docs/bytes-model.md (the model's assumptions are written there).

Every count is in elements of C per active site (row): a number 5 at a site means ``5 * C`` elements read
or written per row. Weights, biases, LN/GRN statistics and halo re-reads are left out (at batch 64 the
largest weight is 1.5 % of one activation pass); each tensor an op reads or writes is counted once.
"""

from __future__ import annotations

import argparse
from typing import NamedTuple

from mmearth_kernels.testing import atto_stage_shapes, tiny_stage_shapes


class Site(NamedTuple):
    op: str
    reads: int    # x C elements per row
    writes: int


# x: block input [N, C]; y1 = dwconv(x); y2 = LN(y1); h = Linear1(y2) [N, 4C]; a = GELU(h);
# g = GRN(a); o = Linear2(g) [N, C]; out = x + o.
TODAY_FWD = [
    Site("dwconv 7x7 (x -> y1)", 1, 1),
    Site("LayerNorm (y1 -> y2)", 1, 1),
    Site("Linear1 (y2 -> h, 4C)", 1, 4),
    Site("GELU (h -> a)", 4, 4),
    Site("GRN statistics (a)", 4, 0),
    Site("GRN apply (a -> g)", 4, 4),
    Site("Linear2 (g -> o)", 4, 1),
    Site("residual (x + o)", 2, 1),
]
TODAY_BWD = [
    Site("Linear2: dg = do W2^T", 1, 4),
    Site("Linear2: dW2 = g^T do", 5, 0),
    Site("Linear2: db2 = sum do", 1, 0),
    Site("GRN backward statistics (dg, a)", 8, 0),
    Site("GRN backward apply (-> da)", 8, 4),
    Site("GELU backward (da, h -> dh)", 8, 4),
    Site("Linear1: dy2 = dh W1^T", 4, 1),
    Site("Linear1: dW1 = y2^T dh", 5, 0),
    Site("Linear1: db1 = sum dh", 4, 0),
    Site("LayerNorm backward (dy2, y1 -> dy1)", 2, 1),
    Site("LayerNorm dgamma/dbeta (dy2, y1)", 2, 0),
    Site("dwconv backward dx (dy1 -> dx)", 1, 1),
    Site("dwconv backward dw/db (dy1, x)", 2, 0),
    Site("gradient sum at the block input (skip + dx)", 2, 1),
]
# Fused: dwconv+LN (saves y1 for the LN backward), Linear1 with a GELU-free epilogue that also sums the GRN
# statistics of GELU(h) (only h is stored), Linear2 whose prologue recomputes GELU and applies GRN on load
# and whose epilogue adds the residual. Backward: Linear2's dg epilogue sums the GRN backward statistics
# (reads h to recompute a); GRN dx and GELU backward in one pass; bias gradients in the GEMM epilogues; the
# skip gradient added in the dwconv backward's epilogue.
FUSED_FWD = [
    Site("dwconv 7x7 + LayerNorm (x -> y2; y1 saved)", 1, 2),
    Site("Linear1 + GRN statistics of GELU(h) (y2 -> h)", 1, 4),
    Site("Linear2, prologue GELU + GRN apply, epilogue + x", 5, 1),
]
FUSED_BWD = [
    Site("Linear2: dg = do W2^T, epilogue GRN bwd statistics (reads h)", 5, 4),
    Site("Linear2: dW2 = GRN(GELU(h))^T do, db2 in it", 5, 0),
    Site("GRN dx + GELU backward (dg, h -> dh)", 8, 4),
    Site("Linear1: dy2 = dh W1^T", 4, 1),
    Site("Linear1: dW1 = y2^T dh, db1 in it", 5, 0),
    Site("LayerNorm backward + dgamma/dbeta (dy2, y1 -> dy1)", 2, 1),
    Site("dwconv backward dx + skip gradient (dy1, do -> dx)", 2, 1),
    Site("dwconv backward dw/db (dy1, x)", 2, 0),
]
SCHEDULES = {"today": (TODAY_FWD, TODAY_BWD), "fused": (FUSED_FWD, FUSED_BWD)}


def elements_per_row(sites: list[Site]) -> int:
    """Elements of C moved per row by the sites (reads + writes)."""
    return sum(s.reads + s.writes for s in sites)


def rows_per_stage(batch: int, kept: int = 19, patches: int = 49) -> list[int]:
    """Active rows at the four stages (56, 28, 14, 7 px at 56/8): kept patches x b^2, b = 8, 4, 2, 1."""
    return [batch * kept * b * b for b in (8, 4, 2, 1)]


def block_bytes(rows: int, C: int, elem_bytes: int, schedule: str) -> tuple[int, int]:
    """(forward, backward) bytes of one block with ``rows`` active rows of width C."""
    fwd, bwd = SCHEDULES[schedule]
    return rows * C * elem_bytes * elements_per_row(fwd), rows * C * elem_bytes * elements_per_row(bwd)


def _site_table(title: str, sites: list[Site]) -> list[str]:
    out = [f"| {title} | reads (x C) | writes (x C) |", "|---|---:|---:|"]
    out += [f"| {s.op} | {s.reads} | {s.writes} |" for s in sites]
    out.append(f"| **total** | **{sum(s.reads for s in sites)}** | **{sum(s.writes for s in sites)}** |")
    return out


def report(batch: int, elem_bytes: int, hbm_tb_s: float) -> str:
    lines = []
    for sched, (fwd, bwd) in SCHEDULES.items():
        lines += _site_table(f"{sched}: forward", fwd) + [""] + _site_table(f"{sched}: backward", bwd) + [""]
    lines += [f"Per block at batch {batch}, {elem_bytes}-byte activations (19 of 49 patches kept); time at "
              f"{hbm_tb_s:g} TB/s:", "",
              "| model | stage | rows | C | today fwd+bwd MB | fused fwd+bwd MB | ratio | today us | fused us |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, shapes in (("atto", atto_stage_shapes()), ("tiny", tiny_stage_shapes())):
        for stage, ((res, C), rows) in enumerate(zip(shapes, rows_per_stage(batch))):
            t = sum(block_bytes(rows, C, elem_bytes, "today"))
            f = sum(block_bytes(rows, C, elem_bytes, "fused"))
            lines.append(f"| {model} | {stage + 1} ({res} px) | {rows} | {C} | {t / 1e6:.1f} | {f / 1e6:.1f} | "
                         f"{t / f:.2f}x | {t / hbm_tb_s / 1e6:.1f} | {f / hbm_tb_s / 1e6:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bytes_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256, help="samples per step (default 256)")
    p.add_argument("--elem-bytes", type=int, default=2, choices=(2, 4), help="2 = bf16, 4 = fp32 activations")
    p.add_argument("--hbm-tb-s", type=float, default=4.0, help="bandwidth for the time columns (H200 ~4.0 "
                   "achievable of 4.8 TB/s)")
    a = p.parse_args(argv)
    print(report(a.batch, a.elem_bytes, a.hbm_tb_s))


if __name__ == "__main__":
    main()
