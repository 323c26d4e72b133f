"""The record's rows, and the check that CI runs on them."""

from __future__ import annotations

from dataclasses import asdict

from .ptxas import occupancy

# What --check enforces (stated in every record, so a reader knows what "passed" meant).
LIMITS = {
    "spill_bytes": 0,            # any spill store or load fails
    "triton_compile_s": 60.0,    # one Triton kernel x config x specialisation, on one core of the machine
    "cuda_compile_s": 300.0,     # one .cu file (all its template instantiations), nvcc -cubin, one architecture
    "min_blocks_per_sm": 1,      # 0 means the launch would fail (too many registers or too much shared memory)
}
USED_BY_SHOWN = 3  # scenario labels kept per row (rows are flat; the count says how many there were)


def with_occupancy(row: dict, arch: str) -> dict:
    if row.get("registers") is None:
        return row
    occ = occupancy(row["registers"], row["threads"], row["shared_bytes"], arch)
    return {**row, **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(occ).items()}}


def triton_rows(job, status: str, payload, seconds: float) -> list[dict]:
    base = dict(kind="triton", kernel=job.kernel, config=job.config, dtype="/".join(job.dtypes), arch=job.arch,
                constants=job.constants, specialisation=job.specialisation, status=status,
                used_by="; ".join(job.scenarios[:USED_BY_SHOWN]), used_by_count=len(job.scenarios))
    if status != "ok":
        return [{**base, "error": payload, "compile_s": round(seconds, 2)}]
    return [with_occupancy({**base, **r}, job.arch) for r in payload]


def cuda_rows(job, status: str, payload, seconds: float) -> list[dict]:
    base = dict(kind="cuda", source=job.source, arch=job.arch, status=status)
    if status != "ok":
        return [{**base, "kernel": job.source, "error": payload, "compile_s": round(seconds, 2)}]
    return [with_occupancy({**base, **r}, job.arch) for r in payload]


def violations(record: dict) -> list[str]:
    """Every row that breaks a limit of ``record["limits"]``, one line each (empty: the check passes)."""
    lim = record["limits"]
    out = []
    for r in record["results"]:
        where = f"{r['kind']} {r['kernel']}" + (f" [{r['config']}]" if r.get("config") else "") + \
                f" {r.get('dtype', '')} {r['arch']}"
        if r["status"] != "ok":
            out.append(f"{where}: {r['status']}: {str(r.get('error', ''))[:300]}")
            continue
        spill = r["spill_stores"] + r["spill_loads"]
        if spill > lim["spill_bytes"]:
            out.append(f"{where}: spills ({r['spill_stores']} bytes stored, {r['spill_loads']} loaded; "
                       f"{r['registers']} registers)")
        cap = lim["cuda_compile_s"] if r["kind"] == "cuda" else lim["triton_compile_s"]
        if r["compile_s"] > cap:
            out.append(f"{where}: compiled in {r['compile_s']:.1f} s, over the {cap:g} s limit")
        if r["blocks_per_sm"] < lim["min_blocks_per_sm"]:
            out.append(f"{where}: {r['limited_by']}")
    return out
