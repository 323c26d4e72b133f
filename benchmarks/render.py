"""``python -m benchmarks.render [--check] [--root DIR]``: the generated parts of the docs, from the records.

* ``docs/results.md``, whole: every record in ``benchmarks/results/`` (formats: ``benchmarks/records.py``), grouped
  by device, then benchmark, newest first, each with its date, commit, command, versions and a table;
* the blocks between ``<!-- NAME:begin [ARG] -->`` and ``<!-- NAME:end -->`` in ``README.md``, ``docs/*.md`` and
  ``benchmarks/README.md``, NAME one of ``BLOCKS``: the backend table with measured speed-ups (``results``), the op x
  impl matrix of this build (``impls``), the kernels against their baselines (``kernels``), one record's table
  (``record FILE``), the bytes model's tables (``bytes-model BATCH``: arithmetic, not a measurement).

``--check`` writes nothing; it exits 1 and prints, per file, the lines that differ when the committed docs are not
what the records generate (CI runs it). ``--root`` renders another checkout (the tests render a copy).
"""

from __future__ import annotations

import argparse
import difflib
import glob
import json
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass

from benchmarks.records import Record, RecordError, read_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = "benchmarks/results"
RESULTS_DOC = "docs/results.md"
BLOCK = re.compile(r"<!-- (?P<name>[\w-]+):begin(?: (?P<arg>[^ ]+))? -->\n(?P<body>.*?)<!-- (?P=name):end -->", re.S)
OPENING = re.compile(r"<!-- ([\w-]+):begin")


# -- what the registries declare ---------------------------------------------------------------------------------
def backend_rows() -> list[tuple[str, str, str]]:
    """(backend, what it runs, when to use it) for every encoder backend, in registry order."""
    from mmearth_kernels.models.registry import BACKEND_SPECS

    return [(s.name, s.runs, s.use) for s in BACKEND_SPECS.values()]


def impl_matrix() -> tuple[list[tuple[str, dict[str, list[str]]]], dict[str, tuple[str, ...]]]:
    """([(op, {device type: impl labels})], auto order per device type): what this *build* has, GPU or not, from the
    op table. An impl whose kernel is another op's plus torch ops (a composite) is marked "(unfused)". Triton is
    listed for CUDA wherever triton is installed: whether a GPU is visible must not change the docs."""
    from mmearth_kernels.ops.registry import AUTO_ORDER, OPS
    from mmearth_kernels.triton_kernels import HAS_TRITON

    rows = []
    for spec in OPS.values():
        cells = {}
        for dev in AUTO_ORDER:
            labels = []
            for impl in spec.impls:
                if impl.kind == "triton":
                    runs_here = dev == "cuda" and HAS_TRITON
                elif impl.kind == "ref":
                    runs_here = impl.tiling == "rows"  # the reference is one, whatever the tiling
                else:
                    runs_here = impl.kind == dev and spec.why_unavailable(impl.kind, dev) is None
                if runs_here:
                    labels.append(f"`{impl.label}`" + ("" if impl.fused or impl.kind == "ref" else " (unfused)"))
            cells[dev] = labels
        rows.append((spec.name, cells))
    return rows, dict(AUTO_ORDER)


# -- formatting -------------------------------------------------------------------------------------------------
def cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    if isinstance(v, (list, dict)):
        v = json.dumps(v, separators=(",", ":"))
    return str(v).replace("|", "\\|").replace("\n", " ")


def table(head: list[str], rows: list[list], right: set[int] = frozenset()) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "".join("---:|" if i in right else "---|" for i in range(len(head)))]
    out += ["| " + " | ".join(r if isinstance(r, str) else cell(r) for r in row) + " |" for row in rows]
    return out


def ratio(a, b) -> str:
    """a / b as a speed-up, or "" when either is missing."""
    return f"{a / b:.2f}x" if a and b else ""


def slug(text: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


@dataclass
class Context:
    root: str
    records: list[Record]
    here: str = ""  # the folder of the file being rendered, relative to root (links are relative to it)

    def link(self, path: str) -> str:
        return os.path.relpath(os.path.join(self.root, path), os.path.join(self.root, self.here))


# -- e2e records ----------------------------------------------------------------------------------------------------
def _e2e():
    from benchmarks.e2e.cases import BASELINES, parse_backend

    return BASELINES, parse_backend


def _group(r: dict) -> tuple:
    return tuple(r.get(k) for k in ("size", "geometry", "precision", "batch", "tasks", "mask_ratio"))


def _memory(r: dict):
    return r.get("peak_mem_mib", r.get("peak_rss_mib"))


def e2e_speedups(rows: list[dict]) -> dict[int, dict[str, float]]:
    """For each timed row (by index): baseline -> baseline ms / row ms, the baseline in the same group (model,
    geometry, precision, batch, tasks, mask) and execution mode (graphed against graphed), from the same run."""
    baselines, parse_backend = _e2e()
    timed = [r for r in rows if "ms_step" in r and not r.get("sweep")]
    by = {(_group(r), r["backend"]): r for r in timed}
    out = {}
    for r in timed:
        mode = parse_backend(r["backend"]).mode
        out[id(r)] = {b: by[(_group(r), b + mode)]["ms_step"] / r["ms_step"] for b in baselines
                      if (_group(r), b + mode) in by}
    return out


def e2e_section(rec: Record, ctx: Context) -> list[str]:
    baselines, _ = _e2e()
    rows = [r for r in rec.results if not r.get("sweep")]
    speed = e2e_speedups(rec.results)
    gpu = rec.on_gpu
    head = ["model", "geometry", "precision", "batch", "mask", "backend", "ms/step", "img/s",
            "peak GPU MiB" if gpu else "peak RSS MiB"] + [f"vs {b}" for b in baselines]
    head += ["kernels/step", "kernel ms/step"] if gpu else ["ops/step"]
    body = []
    for r in rows:
        lead = [r["size"], r["geometry"], r["precision"], r["batch"], f"{r['mask_ratio']:g}", f"`{r['backend']}`"]
        if "ms_step" not in r:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"failed: {r.get('error', '?')}"
            body.append([*lead, why] + [""] * (len(head) - len(lead) - 1))
            continue
        s = speed.get(id(r), {})
        counts = [_num(r.get("kernels_per_step")), _num(r.get("kernel_ms_per_step"), 2)] if gpu else \
            [_num(r.get("ops_per_step"))]
        body.append([*lead, f"{r['ms_step']:.1f}", f"{r['img_s']:.1f}", _num(_memory(r))]
                    + [f"{s[b]:.2f}x" if b in s else "" for b in baselines] + counts)
    out = ["Speed-ups: the baseline's ms/step over the row's, same run, same execution mode.", ""]
    out += table(head, body, set(range(6, len(head))))
    host = rec.extra.get("host_cost")
    if host:
        out += ["", "Host cost of one step at batch 1 (eager; on a GPU every op of a step this small is a launch):", ""]
        out += table(["model", "mask", "backend", "host ms/step", "ops dispatched/step", "with device work",
                      "custom-op calls"],
                     [[h["size"], f"{h['mask_ratio']:g}", f"`{h['backend']}`", _num(h.get("host_ms_b1"), 1),
                       _num(h.get("ops_per_step")), _num(h.get("device_ops_per_step")),
                       _num(h.get("custom_ops_per_step"))] for h in host], {3, 4, 5, 6})
    sweeps = [r for r in rec.results if r.get("sweep") and "ms_step" in r]
    if sweeps:
        out += ["", "Sweeps (`--scaling`):", ""]
        out += table(["model", "batch", "mask", "backend", "ms/step", "img/s"],
                     [[r["size"], r["batch"], f"{r['mask_ratio']:g}", f"`{r['backend']}`", f"{r['ms_step']:.1f}",
                       f"{r['img_s']:.1f}"] for r in sweeps], {4, 5})
    fits = rec.extra.get("scaling")
    if fits:
        out += ["", "Step time against the kept fraction, least squares (`fixed` = what masking does not shrink):", ""]
        out += table(["backend", "model", "batch", "fixed ms", "ms per unit kept fraction", "R^2"],
                     [[f"`{f['backend']}`", f["size"], f.get("batch"), _num(f["intercept"], 1), _num(f["slope"], 1),
                       _num(f["r2"], 3)] for f in fits], {3, 4, 5})
    return out


def profile_section(rec: Record, ctx: Context) -> list[str]:
    from train.profiling import op_table_markdown

    out = []
    for p in rec.extra.get("profiles", []):
        c = p["case"]
        if "step_ms" in p:  # the trainer's op table (train/profiling.py), as the e2e benchmark writes it now
            title = (f"`{c['backend']}` {c['size']} {c['geometry']} mask {c['mask_ratio']:g} {c['precision']} "
                     f"b{c['batch']}: {p['wall_ms_per_step']:.1f} ms/step wall under the profiler")
            out += [title + ".", ""] + op_table_markdown(p).rstrip("\n").split("\n") + [""]
            continue
        tot = p["profiled_ms_per_step"]
        out += [f"`{c['backend']}` {c['size']} {c['geometry']} mask {c['mask_ratio']:g} {c['precision']} "
                f"b{c['batch']}: {p['wall_ms_per_step']:.1f} ms/step wall under the profiler, {tot:.1f} ms of op "
                "self time:", ""]
        out += table(["category", "ms/step", "share"],
                     [[k, f"{v:.1f}", f"{100 * v / tot:.0f} %"] for k, v in p["categories"].items()], {1, 2})
        out += ["", "| top ops (self time) | calls/step | ms/step |", "|---|---:|---:|"]
        out += [f"| `{o['name']}` | {o['calls']} | {o['ms']:.2f} |" for o in p["top_ops"][:10]]
        out.append("")
    return out[:-1]


def _num(v, digits: int = 0) -> str:
    return "" if v is None else f"{v:.{digits}f}"


# -- pytest-benchmark records ---------------------------------------------------------------------------------------
def _kernel_meta():
    from benchmarks.report import BASELINE, KERNEL_IMPLS

    return BASELINE, KERNEL_IMPLS


def kernel_rows(rec: Record) -> dict[tuple, dict[str, dict]]:
    """(op, dtype, model, res, C, mode) -> impl -> row, for the kernel benchmarks' rows of a record."""
    out: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rec.results:
        if "op" in r and "impl" in r:
            out[(r["op"], r["dtype"], r["model"], r["res"], r["C"], r["mode"])][r["impl"]] = r
    return out


MODES = ("fwd", "bwd", "fwdbwd")


def kernel_section(rec: Record, ctx: Context) -> list[str]:
    baseline, kernel_impls = _kernel_meta()
    rows = kernel_rows(rec)
    out = []
    for op in sorted({k[0] for k in rows}):
        keys = sorted((k for k in rows if k[0] == op), key=lambda k: (k[1], k[2], -k[3], MODES.index(k[5])))
        impls = sorted({i for k in keys for i in rows[k]}, key=lambda i: (i not in kernel_impls, i))
        kern = [i for i in impls if i in kernel_impls]
        base = baseline.get(op)
        head = ["dtype", "model", "shape", "mode"] + [f"{i} ms" for i in impls]
        head += [f"{i} vs {base}" for i in kern if base] + [f"{i} GB/s" for i in kern]
        body = []
        for k in keys:
            r = rows[k]
            ms = {i: r[i]["median_s"] * 1e3 for i in r}
            line = [k[1], k[2], f"{k[3]} px, C {k[4]}", k[5]] + [f"{ms[i]:.3f}" if i in ms else "" for i in impls]
            line += [ratio(ms.get(base), ms.get(i)) for i in kern if base]
            line += [f"{r[i]['bytes'] / r[i]['median_s'] / 1e9:.1f}" if i in r and r[i].get("bytes") else ""
                     for i in kern]
            body.append(line)
        out += [f"`{op}` (median of each case's rounds; GB/s: the sparse problem's ideal bytes / time):", ""]
        out += table(head, body, set(range(4, len(head)))) + [""]
    others = [r for r in rec.results if not ("op" in r and "impl" in r)]
    if others:
        out += generic_rows(others, drop=("torch", "cuda", "cpu", "gpu", "git", "threads", "pid", "name", "bench"))
    return out[:-1] if out and out[-1] == "" else out


def generic_rows(rows: list[dict], drop=()) -> list[str]:
    """A table of any rows: the fields that vary as columns (the constant ones in a line above it); a
    ``median_s`` becomes ms, and a ``samples`` count a rate."""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in drop]
    const = {k: rows[0].get(k) for k in keys if len(rows) > 1 and all(r.get(k) == rows[0].get(k) for r in rows)}
    cols = [k for k in keys if k not in const and k not in ("median_s", "min_s")]
    timed = any("median_s" in r for r in rows)
    head = cols + (["median ms"] if timed else []) + (["samples/s"] if timed and "samples" in keys else [])
    body = []
    for r in rows:
        line = [cell(r.get(k)) for k in cols]
        if timed:
            line.append(cell(r["median_s"] * 1e3) if "median_s" in r else "")
        if timed and "samples" in keys:
            line.append(_num(r["samples"] / r["median_s"]) if r.get("samples") and r.get("median_s") else "")
        body.append(line)
    out = ["Same in every row: " + ", ".join(f"{k} {cell(v)}" for k, v in const.items()) + ".", ""] if const else []
    return out + table(head, body)


# what a kernel_resources row needs for the summary; a record without them (hand-made, older) gets the generic table
KERNEL_RESOURCE_FIELDS = {"kind", "kernel", "arch", "status"}


def kernel_resources_section(rec: Record) -> list[str]:
    """One line per kernel x config x arch (its specialisations and dtypes folded in): the worst registers, spills,
    occupancy and compile time; the record keeps every row (``python -m benchmarks.kernel_resources``)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rec.results:
        groups[(r["kind"], r["kernel"], r.get("config") or "", r["arch"])].append(r)
    body = []
    for (kind, kernel, config, arch), rows in sorted(groups.items()):
        ok = [r for r in rows if r.get("status") == "ok"]
        spills = sum(r.get("spill_stores", 0) + r.get("spill_loads", 0) for r in ok)
        bad = [r.get("status") for r in rows if r.get("status") != "ok"]
        body.append([kind, f"`{kernel}`", config, arch, str(len(rows)),
                     str(max((r["registers"] for r in ok), default="")),
                     str(spills), str(min((r["warps_per_sm"] for r in ok), default="")),
                     f"{max((r['compile_s'] for r in ok), default=0):.1f}", ", ".join(sorted(set(bad))) or "ok"])
    return [f"{len(rec.results)} compiles in {len(groups)} groups (kernel x config x arch; dtypes and "
            "specialisations folded: the worst of each):", ""] + table(
        ["kind", "kernel", "config", "arch", "compiles", "max registers", "spill bytes", "min warps/SM",
         "max compile s", "status"], body, {4, 5, 6, 7, 8})


def record_table(rec: Record, ctx: Context) -> list[str]:
    """The table(s) of one record, by what the renderer knows of its kind; any other kind gets a generic table."""
    if rec.benchmark == "kernel_resources" and all(KERNEL_RESOURCE_FIELDS <= r.keys() for r in rec.results):
        return kernel_resources_section(rec)
    if rec.format == "e2e":
        return profile_section(rec, ctx) if "profiles" in rec.extra else e2e_section(rec, ctx)
    if rec.format == "pytest-benchmark":
        return kernel_section(rec, ctx) if rec.results else ["(no timings: a `--benchmark-disable` run)"]
    return generic_rows(rec.results) if rec.results else ["(no rows)"]


def record_header(rec: Record, ctx: Context, level: str = "####") -> list[str]:
    date = rec.date.replace("T", " ")[:16] + (" UTC" if len(rec.date) > 10 else "")
    name = os.path.basename(rec.path)
    out = [f"{level} {date} · git {rec.commit} · [{name}]({ctx.link(rec.path)})", ""] if level else []
    out += ["```bash", rec.command or "# the command was not recorded", "```", ""]
    out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in rec.versions.items()) + ".")
    by_source: dict[str, list[str]] = defaultdict(list)
    for what, source in rec.added_later.items():
        by_source[source].append(what)
    if by_source:
        out.append("Added after the run (its writer did not record them): " + "; ".join(
            f"{', '.join(fields)} from {source}" for source, fields in by_source.items()) + ".")
    if rec.notes:
        out += ["", rec.notes]
    return out + [""]


# -- docs/results.md --------------------------------------------------------------------------------------------------
def results_doc(ctx: Context) -> str:
    by_device: dict[str, dict[str, list[Record]]] = defaultdict(lambda: defaultdict(list))
    for rec in ctx.records:
        by_device[rec.device][rec.benchmark].append(rec)
    devices = sorted(by_device, key=lambda d: (not any(r.on_gpu for b in by_device[d].values() for r in b), d))
    out = ["# Results", "",
           "<!-- generated by `python -m benchmarks.render` from benchmarks/results/*.json: edit the records, not "
           "this file -->", "",
           f"Every measurement committed in [`{RESULTS}/`]({ctx.link(RESULTS)}), one record per file (the formats: "
           "`benchmarks/records.py`), grouped by device and benchmark, newest first. Compare numbers within one "
           "record: the CPU machines are shared 2-core VMs whose speed varies from run to run, and two records with "
           "the same device label may come from different VMs of that class. How to run each benchmark: "
           f"[`benchmarks/README.md`]({ctx.link('benchmarks/README.md')}).", ""]
    for dev in devices:
        out.append(f"- [{dev}](#{slug(dev)}): " + ", ".join(f"{b} ({len(rs)})" for b, rs in
                                                           sorted(by_device[dev].items())))
    for dev in devices:
        out += ["", f"## {dev}"]
        for bench, recs in sorted(by_device[dev].items()):
            out += ["", f"### {bench}", ""]
            for rec in sorted(recs, key=lambda r: (r.date, r.path), reverse=True):
                out += record_header(rec, ctx) + record_table(rec, ctx) + [""]
            out.pop()
    return "\n".join(out) + "\n"


# -- blocks ---------------------------------------------------------------------------------------------------------
def _best_e2e(ctx: Context, backend: str, gpu: bool):
    """(record, row, {baseline: speed-up}) for ``backend`` on a GPU (or CPU): among the e2e records that ran it next
    to a baseline, the graphed step first (on a GPU the one that compares GPU work, not host launches), then the
    most baselines, then the newest; in it, the group with mask 0.6 (FCMAE's) if there is one, atto first."""
    best, best_key = None, None
    for rec in ctx.records:
        if rec.format != "e2e" or rec.on_gpu != gpu or "profiles" in rec.extra:
            continue
        speed = e2e_speedups(rec.results)
        rows = [r for r in rec.results if r.get("backend") in (backend, backend + "-graphed") and speed.get(id(r))]
        if not rows:
            continue
        row = min(rows, key=lambda r: (not r["backend"].endswith("-graphed"), abs(r["mask_ratio"] - 0.6),
                                       r["size"] != "atto", r["batch"]))
        key = (row["backend"].endswith("-graphed"), len(speed[id(row)]), rec.date)
        if best_key is None or key > best_key:
            best, best_key = (rec, row, speed[id(row)]), key
    return best


def block_results(ctx: Context, arg: str | None) -> list[str]:
    baselines, _ = _e2e()
    versus = " / ".join(f"`{b}`" for b in baselines)
    head = ["backend", "what it runs", "when to use it"] + [f"{kind}: speed-up vs {versus}" for kind in ("CPU", "GPU")]
    body, graphed = [], False
    for name, what, when in backend_rows():
        line = [f"`{name}`", what, when.replace("](docs/", f"]({ctx.link('docs')}/")]
        for gpu in (False, True):
            found = _best_e2e(ctx, name, gpu)
            if not found:
                line.append("not measured")
                continue
            rec, row, speed = found
            mode = parse_mode(row["backend"])
            graphed |= gpu and bool(mode)
            vals = " / ".join("baseline" if b == name else f"**{speed[b]:.2f}x**" if b in speed else "–"
                              for b in baselines)
            line.append(f"{vals} ({rec.device.removeprefix('CPU: ')}; {row['size']} {row['geometry']} "
                        f"{row['precision']} b{row['batch']}, mask {row['mask_ratio']:g}"
                        f"{', ' + mode.strip('-') if mode else ''}; [{rec.day}]({ctx.link(rec.path)}))")
        body.append(line)
    out = table(head, body) + [
        "", "Speed-up: the baseline's time per training step over the backend's (`python -m benchmarks.e2e`: "
        "forward, backward and optimiser of the MP-MAE, measured side by side in one run, in the same execution "
        "mode); per column the CUDA-graphed step where measured, else the eager one, from the newest record with the "
        f"most baselines. Every record: [docs/results.md]({ctx.link(RESULTS_DOC)})."]
    if not graphed:
        out[-1] += (" No CUDA-graphed step is measured yet: an eager GPU step at these batch sizes is bound by host "
                    f"launches ([backends.md]({ctx.link('docs/backends.md')})).")
    return out


def parse_mode(backend: str) -> str:
    """'-graphed', '-compiled', ... or '' for an eager step."""
    return _e2e()[1](backend).mode


def block_impls(ctx: Context, arg: str | None) -> list[str]:
    rows, auto = impl_matrix()
    head = ["op"] + [f"{dev.upper()} tensors" for dev in auto]
    body = [[f"`{op}`"] + [", ".join(cells[dev]) for dev in auto] for op, cells in rows]
    order = "; ".join(f"{dev}: " + " > ".join(f"`{i}`" for i in order) for dev, order in auto.items())
    return table(head, body) + [
        "", "What this build has (`python -m mmearth_kernels.info` lists what runs on your machine). "
        f"`impl=\"auto\"` picks the first available of {order}. `ref` is pure PyTorch; `triton` runs CUDA tensors "
        "(CPU tensors only under `TRITON_INTERPRET=1`, for tests); \"(unfused)\": this device has no kernel of "
        "the op's own, so it runs another op's kernel plus torch ops."]


def block_kernels(ctx: Context, arg: str | None) -> list[str]:
    baseline, kernel_impls = _kernel_meta()
    body = []
    for rec in sorted(ctx.records, key=lambda r: (r.date, r.path), reverse=True):
        rows = kernel_rows(rec) if rec.format == "pytest-benchmark" else {}
        for op in sorted({k[0] for k in rows}):
            base = baseline.get(op)
            for impl in [i for i in kernel_impls if any(i in rows[k] for k in rows if k[0] == op)]:
                for dtype in sorted({k[1] for k in rows if k[0] == op}):
                    cells = []
                    for mode in MODES:
                        ratios = [rows[k][base]["median_s"] / rows[k][impl]["median_s"] for k in rows
                                  if k[0] == op and k[1] == dtype and k[5] == mode and impl in rows[k]
                                  and base in rows[k]]
                        cells.append(_range(ratios))
                    if any(cells):
                        body.append([f"`{op}`", f"`{impl}` vs `{base}`", rec.device, dtype, *cells,
                                     f"[{os.path.splitext(os.path.basename(rec.path))[0]}]({ctx.link(rec.path)})"])
    body.sort(key=lambda r: r[0])  # stable: newest first within an op
    return table(["op", "impl vs baseline", "device", "dtype", "fwd", "bwd", "fwd+bwd", "record"], body) + [
        "", "Speed-up over the baseline measured in the same run (`benchmarks/bench_*.py`): lowest-highest over the "
        "atto and tiny stage shapes (batch 64, mask 0.6), geometric mean in brackets. Baselines: what the backend "
        "without the kernel runs (`benchmarks/report.py`). Every shape: "
        f"[docs/results.md]({ctx.link(RESULTS_DOC)})."]


def _range(ratios: list[float]) -> str:
    if not ratios:
        return ""
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    return f"{min(ratios):.2f}-{max(ratios):.2f}x ({geo:.2f}x)"


def block_record(ctx: Context, arg: str | None) -> list[str]:
    if not arg:
        raise SystemExit("render: the record block needs the record's file name: <!-- record:begin NAME.json -->")
    path = f"{RESULTS}/{arg}"
    rec = next((r for r in ctx.records if r.path == path), None)
    if rec is None:
        raise SystemExit(f"render: <!-- record:begin {arg} -->: no record {path}")
    date = rec.date.replace("T", " ")[:16]
    head = [f"{rec.device}, {date}, git {rec.commit} ([record]({ctx.link(rec.path)})): "
            f"`{rec.command or 'the command was not recorded'}`", ""]
    return head + ([rec.notes, ""] if rec.notes else []) + record_table(rec, ctx)


def block_train_run(ctx: Context, arg: str | None) -> list[str]:
    """A trainer run's record (``benchmarks/record_run.py``): its command, the summary table the trainer printed at the
    end and, if the run was profiled, the time by category of its profiled steps (``train/profiling.py``; the
    logging windows and the top ops are in the record, and docs/results.md shows them)."""
    from train.profiling import op_table_markdown
    from train.summary import summary_table

    path = f"{RESULTS}/{arg}"
    rec = next((r for r in ctx.records if r.path == path), None)
    if rec is None or "summary" not in rec.extra:
        raise SystemExit(f"render: <!-- train-run:begin {arg} -->: no trainer-run record {path}")
    out = ["```", f"$ {rec.command}", "...", "[train] run summary (OUT/summary.json):",
           summary_table(rec.extra["summary"]), "```", "",
           f"{rec.device}, {rec.day}, git {rec.commit} ([record]({ctx.link(rec.path)})):"]
    if "profile" in rec.extra:
        md = op_table_markdown(rec.extra["profile"]).split("\n| top ops")[0].rstrip("\n").split("\n")
        out += ["", "Its `OUT/profile/ops.md`:", ""] + [line for line in md if not line.startswith("GB/s:")]
    return out


def block_bytes_model(ctx: Context, arg: str | None) -> list[str]:
    """The tables ``python -m benchmarks.bytes_model --batch ARG`` prints (model arithmetic, not a measurement)."""
    import contextlib
    import io

    from benchmarks import bytes_model

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        bytes_model.main(["--batch", arg or "64"])
    return out.getvalue().rstrip("\n").split("\n")


BLOCKS = {"results": block_results, "impls": block_impls, "kernels": block_kernels, "record": block_record,
          "train-run": block_train_run, "bytes-model": block_bytes_model}


def render_blocks(text: str, rel: str, ctx: Context) -> str:
    names = OPENING.findall(text)
    unknown = sorted(set(names) - set(BLOCKS))
    if unknown:
        raise SystemExit(f"render: {rel} has blocks {unknown}; known: {', '.join(BLOCKS)}")
    ends = sum(1 for m in BLOCK.finditer(text))
    if ends != len(names):
        raise SystemExit(f"render: {rel} has a <!-- NAME:begin --> without its <!-- NAME:end -->")

    def fill(m: re.Match) -> str:
        body = "\n".join(BLOCKS[m["name"]](ctx, m["arg"]))
        arg = f" {m['arg']}" if m["arg"] else ""
        return f"<!-- {m['name']}:begin{arg} -->\n{body}\n<!-- {m['name']}:end -->"

    return BLOCK.sub(fill, text)


def targets(root: str) -> list[str]:
    """The files render writes, relative to root: docs/results.md and every file that may hold blocks."""
    docs = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "docs", "*.md")))
    found = [p for p in ("README.md", "benchmarks/README.md", *docs) if os.path.exists(os.path.join(root, p))]
    return found + ([RESULTS_DOC] if RESULTS_DOC not in found else [])


def render(root: str) -> dict[str, tuple[str, str]]:
    """{file: (what is there, what the records generate)} for every target file."""
    try:
        records = read_all(os.path.join(root, RESULTS), root)
    except RecordError as e:
        raise SystemExit(f"render: {e}") from None
    out = {}
    for rel in targets(root):
        path = os.path.join(root, rel)
        old = open(path).read() if os.path.exists(path) else ""
        ctx = Context(root, records, os.path.dirname(rel))
        out[rel] = (old, results_doc(ctx) if rel == RESULTS_DOC else render_blocks(old, rel, ctx))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.render", description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=REPO, help="the checkout to render (default: this one)")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 and show the differing lines if the docs are not what the records give")
    args = ap.parse_args(argv)
    stale = 0
    for rel, (old, new) in render(os.path.abspath(args.root)).items():
        if old == new:
            continue
        stale += 1
        if args.check:
            diff = difflib.unified_diff(old.splitlines(), new.splitlines(), f"{rel} (committed)",
                                        f"{rel} (generated)", lineterm="", n=1)
            print("\n".join(diff))
        else:
            with open(os.path.join(args.root, rel), "w") as f:
                f.write(new)
            print(f"render: wrote {rel}")
    if args.check and stale:
        print(f"\nrender --check: {stale} file(s) differ from what benchmarks/results/ generates; run "
              "`python -m benchmarks.render` and commit the result (edit the records, not the generated text)",
              file=sys.stderr)
        return 1
    if args.check:
        print("render --check: the docs match the records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
