"""What ``ptxas -v`` says about each kernel, and what that allows per multiprocessor (an occupancy estimate).

Pure functions on text and numbers: the tests feed them captured ptxas output and hand-checked cases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Per-SM limits of the architectures we compile for (CUDA C Programming Guide, "Compute Capabilities" table;
# the same numbers as NVIDIA's occupancy calculator). Shared memory: the per-SM carve-out maximum, of which the
# driver reserves 1 KB per resident block on compute capability >= 8.0.
ARCH_LIMITS = {
    "sm_80": dict(regs_per_sm=65536, max_regs_per_thread=255, reg_alloc_unit=256, warp_alloc_granularity=4,
                  max_threads_per_sm=2048, max_blocks_per_sm=32, smem_per_sm=164 * 1024, smem_per_block=163 * 1024,
                  smem_reserved_per_block=1024, smem_alloc_unit=128),
    "sm_90a": dict(regs_per_sm=65536, max_regs_per_thread=255, reg_alloc_unit=256, warp_alloc_granularity=4,
                   max_threads_per_sm=2048, max_blocks_per_sm=32, smem_per_sm=228 * 1024, smem_per_block=227 * 1024,
                   smem_reserved_per_block=1024, smem_alloc_unit=128),
}
WARP = 32


@dataclass
class PtxasEntry:
    """One entry function's resources as ptxas reports them (bytes for memory, a count for registers)."""

    registers: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    stack_bytes: int = 0
    smem_bytes: int = 0  # static shared memory only (Triton's is dynamic: see the compiled kernel's metadata)
    barriers: int = 0


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(\w+)'")
_PROPS = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_BARRIERS = re.compile(r"used (\d+) barriers")


def parse_ptxas(text: str) -> dict[str, PtxasEntry]:
    """``{mangled entry name: PtxasEntry}`` from ``ptxas -v`` output (also as nvcc -Xptxas -v prints it).

    ptxas prints, per entry: "Compiling entry function 'NAME' for 'sm_XX'", then "Function properties for NAME"
    followed by a line with the stack frame and spill bytes, then "Used N registers, ... N bytes smem ...".
    Property blocks of non-entry functions (called device functions) are skipped."""
    out: dict[str, PtxasEntry] = {}
    current = None  # the entry whose lines we are reading
    props_of = None  # the function whose "Function properties" block is open
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = m.group(1)
            out[current] = PtxasEntry()
            props_of = None
            continue
        if m := _PROPS.search(line):
            props_of = m.group(1)
            continue
        if m := _FRAME.search(line):
            if props_of is not None and props_of in out:
                e = out[props_of]
                e.stack_bytes, e.spill_stores, e.spill_loads = (int(g) for g in m.groups())
            props_of = None
            continue
        if (m := _USED.search(line)) and current is not None:
            e = out[current]
            e.registers = int(m.group(1))
            if s := _SMEM.search(line):
                e.smem_bytes = int(s.group(1))
            if b := _BARRIERS.search(line):
                e.barriers = int(b.group(1))
    return out


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


@dataclass
class Occupancy:
    blocks_per_sm: int
    warps_per_sm: int
    occupancy: float  # resident warps / the SM's maximum
    limited_by: str   # "registers", "shared memory", "threads", "blocks" or "cannot launch: ..."


def occupancy(registers: int, threads: int, smem_bytes: int, arch: str) -> Occupancy:
    """Resident blocks and warps per SM for a kernel using ``registers`` per thread, ``threads`` per block and
    ``smem_bytes`` of shared memory per block: the smallest of the register, shared-memory, thread and block
    limits (the occupancy calculator's arithmetic: registers allocated per warp in units of 256, warps in groups
    of 4; shared memory in units of 128 bytes plus the 1 KB reserved per block). An estimate: it ignores the
    shared-memory carve-out the driver picks at run time (it assumes the maximum)."""
    lim = ARCH_LIMITS[arch]
    warps = -(-threads // WARP)
    max_warps = lim["max_threads_per_sm"] // WARP
    if threads <= 0:
        raise ValueError(f"threads must be > 0, got {threads}")
    if registers > lim["max_regs_per_thread"] or registers * WARP * warps > lim["regs_per_sm"]:
        return Occupancy(0, 0, 0.0, f"cannot launch: {registers} registers x {threads} threads")
    if smem_bytes > lim["smem_per_block"]:
        return Occupancy(0, 0, 0.0, f"cannot launch: {smem_bytes} bytes of shared memory per block")
    limits = {"blocks": lim["max_blocks_per_sm"], "threads": max_warps // warps}
    if registers > 0:
        per_warp = _round_up(registers * WARP, lim["reg_alloc_unit"])
        g = lim["warp_alloc_granularity"]
        limits["registers"] = (lim["regs_per_sm"] // per_warp) // g * g // warps
    per_block = _round_up(smem_bytes, lim["smem_alloc_unit"]) + lim["smem_reserved_per_block"]
    limits["shared memory"] = lim["smem_per_sm"] // per_block
    why = min(limits, key=lambda k: limits[k])
    blocks = limits[why]
    return Occupancy(blocks, blocks * warps, blocks * warps / max_warps, why)
