"""Benchmark results as records: one JSON file per measurement in ``benchmarks/results/``, read into one shape.

A record says what was measured (``benchmark``), on what (``device``), when (``date``), from which ``commit``, by
which ``command``, with which ``versions``, and the numbers (``results``: a list of flat rows). Four file formats
are records, each as its writer writes it (``read`` tells them apart):

* the generic record, for new writers (``write_record``)::

      {"benchmark": "kernel_resources", "device": "NVIDIA H200", "date": "2026-12-06T10:00:00+00:00",
       "commit": "8812f87", "command": "python -m ...", "versions": {"torch": "..."}, "results": [{...}, ...],
       "notes": "optional text", "added_later": {"command": "where it came from"}}

* ``python -m benchmarks.e2e``'s JSON: ``{"context": {...}, "results": [...]}`` (or ``"profiles"`` with --profile);
* pytest-benchmark's ``--benchmark-json``: ``{"machine_info", "commit_info", "datetime", "benchmarks": [...]}``;
* ``benchmarks/gpu_env.py``'s JSON: ``{"date", "gpu", "torch", ..., "copy_gbs"}``.

A file of the last three formats may carry a ``"record"`` object with fields its writer did not record (a
pytest-benchmark run knows no command line): ``command``, ``commit``, ``date``, ``notes``, and ``added_later``
naming, for each field added after the run, where it was taken from (git history, a session's notes).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field

REQUIRED = ("benchmark", "device", "date", "commit", "command", "versions", "results")
# what a "record" object inside a file of another format may add or correct
SUPPLEMENT = ("command", "commit", "date", "notes", "added_later")


class RecordError(ValueError):
    """A file in the results folder that is not a record, or a record missing a field."""


@dataclass
class Record:
    path: str              # the file, relative to the results folder's parent's parent (the repository root)
    benchmark: str         # what was measured: "e2e", "bench_grn", "kernel_resources", ...
    device: str            # what it ran on, as grouped in docs/results.md: "NVIDIA H200", "CPU: AMD EPYC, 2 cores"
    date: str              # ISO 8601, UTC where the writer said so
    commit: str            # short git sha ("unknown" if the writer could not tell); "+dirty" when uncommitted edits
    command: str | None    # None: the writer did not record it and nobody added it
    versions: dict
    results: list[dict]
    format: str            # "record", "e2e", "pytest-benchmark" or "gpu-env"
    notes: str = ""
    added_later: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # format-specific parts: host_cost, scaling, profiles

    @property
    def day(self) -> str:
        return self.date[:10]

    @property
    def on_gpu(self) -> bool:
        return not self.device.lower().startswith("cpu")


def cpu_label(name: str | None, cores) -> str:
    """"Intel(R) Xeon(R) Processor", 2 -> "CPU: Intel Xeon, 2 cores": one label per machine kind, whichever
    writer (pytest-benchmark's cpuinfo or e2e's /proc/cpuinfo) named it."""
    name = re.sub(r"\((R|TM|tm)\)", "", name or "unknown CPU")
    name = re.sub(r"\s+(Processor|CPU)\b.*$", "", name).strip() or "unknown CPU"
    name = re.sub(r"\s+", " ", name)
    return f"CPU: {name}, {cores} cores" if cores else f"CPU: {name}"


def device_slug(device: str) -> str:
    """A device label as a file-name part: "CPU: AMD EPYC, 2 cores" -> "cpu-amd-epyc-2-cores"."""
    return re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")


def _require(path: str, doc: dict, keys, what: str) -> None:
    missing = [k for k in keys if k not in doc]
    if missing:
        raise RecordError(f"{path}: {what} lacks {', '.join(missing)} (a record needs {', '.join(REQUIRED)}; "
                          f"see benchmarks/records.py)")


def _commit(sha: str | None, dirty) -> str:
    sha = (sha or "unknown")[:7]
    return sha + ("+dirty" if dirty else "")


def _from_generic(path: str, doc: dict) -> Record:
    _require(path, doc, REQUIRED, "the record")
    if not isinstance(doc["results"], list) or not all(isinstance(r, dict) for r in doc["results"]):
        raise RecordError(f"{path}: 'results' must be a list of objects (rows), got {type(doc['results']).__name__}")
    if not isinstance(doc["versions"], dict):
        raise RecordError(f"{path}: 'versions' must be an object (name -> version)")
    extra = {k: v for k, v in doc.items() if k not in REQUIRED and k not in ("notes", "added_later")}
    return Record(path, str(doc["benchmark"]), str(doc["device"]), str(doc["date"]), str(doc["commit"]),
                  doc["command"], doc["versions"], doc["results"], "record", doc.get("notes", ""),
                  doc.get("added_later", {}), extra)


def _from_e2e(path: str, doc: dict) -> Record:
    ctx = doc["context"]
    _require(path, ctx, ("device", "date", "git", "command"), "the e2e context")
    device = ctx.get("gpu") if ctx["device"] == "cuda" else cpu_label(ctx.get("cpu"), ctx.get("cores"))
    versions = {k: ctx.get(k) for k in ("torch", "cuda", "triton", "python") if ctx.get(k)}
    if ctx.get("threads"):
        versions["threads"] = ctx["threads"]
    profiles = "profiles" in doc
    extra = {k: doc[k] for k in ("host_cost", "scaling", "scaling_batch_width", "profiles") if doc.get(k)}
    return Record(path, "e2e-profile" if profiles else "e2e", device, ctx["date"],
                  _commit(ctx["git"], ctx.get("git_dirty")), ctx["command"], versions,
                  [] if profiles else doc.get("results", []), "e2e", extra=extra)


def _bench_file(b: dict) -> str:
    return os.path.splitext(os.path.basename(b.get("fullname", "?").split("::")[0]))[0]


def _from_pytest_benchmark(path: str, doc: dict) -> Record:
    rows = []
    for b in doc["benchmarks"]:
        if not b.get("stats"):  # --benchmark-disable (smoke) runs record no timings
            continue
        s = b["stats"]
        rows.append({**b.get("extra_info", {}), "bench": _bench_file(b), "name": b.get("name"),
                     "median_s": s["median"], "min_s": s["min"], "rounds": s["rounds"]})
    machine, commit = doc.get("machine_info", {}), doc.get("commit_info", {})
    gpus = sorted({r["gpu"] for r in rows if r.get("device") == "cuda" and r.get("gpu")})
    cpu = machine.get("cpu", {})
    device = ", ".join(gpus) if gpus else cpu_label(cpu.get("brand_raw"), cpu.get("count"))
    first = rows[0] if rows else {}
    versions = {"torch": first.get("torch"), "cuda": first.get("cuda"), "python": machine.get("python_version"),
                "pytest-benchmark": doc.get("version")}
    if first.get("threads"):
        versions["threads"] = first["threads"]
    benchmark = " + ".join(sorted({r["bench"] for r in rows})) or "pytest-benchmark (no timings)"
    return Record(path, benchmark, device, doc["datetime"], _commit(commit.get("id"), commit.get("dirty")), None,
                  {k: v for k, v in versions.items() if v}, rows, "pytest-benchmark")


def _from_gpu_env(path: str, doc: dict) -> Record:
    versions = {k: doc[k] for k in ("torch", "cuda", "triton", "python", "driver") if doc.get(k)}
    row = {k: v for k, v in doc.items() if k not in versions and k not in ("date", "record", "command", "commit")}
    return Record(path, "gpu_env", doc["gpu"] or "CPU (gpu_env.py without a GPU)", doc["date"],
                  doc.get("commit", "unknown"), doc.get("command"), versions, [row], "gpu-env")


# (the format's name, how to recognise it, how to read it): the first that matches reads the file
FORMATS = (
    ("e2e", lambda d: "context" in d and ("results" in d or "profiles" in d), _from_e2e),
    ("pytest-benchmark", lambda d: "benchmarks" in d and "machine_info" in d, _from_pytest_benchmark),
    ("gpu-env", lambda d: {"date", "gpu", "torch"} <= set(d) and "results" not in d, _from_gpu_env),
    ("record", lambda d: "benchmark" in d or "results" in d, _from_generic),
)


def read(path: str, root: str | None = None) -> Record:
    """The record in one JSON file; ``RecordError`` naming the file if it is none."""
    rel = os.path.relpath(path, root) if root else path
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RecordError(f"{rel}: cannot read it as JSON: {e}") from None
    if not isinstance(doc, dict):
        raise RecordError(f"{rel}: a record is a JSON object, got {type(doc).__name__}")
    for _, matches, reader in FORMATS:
        if matches(doc):
            rec = reader(rel, doc)
            break
    else:
        raise RecordError(f"{rel}: not a record in any known format ({', '.join(name for name, _, _ in FORMATS)}); "
                          f"a generic record needs {', '.join(REQUIRED)} (see benchmarks/records.py)")
    sup = doc.get("record", {}) if rec.format != "record" else {}
    unknown = set(sup) - set(SUPPLEMENT)
    if unknown:
        raise RecordError(f"{rel}: its 'record' object may hold {', '.join(SUPPLEMENT)}, not {', '.join(unknown)}")
    for k in SUPPLEMENT:
        if k in sup:
            setattr(rec, k, sup[k])
    return rec


def read_all(folder: str, root: str | None = None) -> list[Record]:
    """Every ``*.json`` in ``folder``, oldest first (ties by path)."""
    paths = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".json"))
    return sorted((read(p, root) for p in paths), key=lambda r: (r.date, r.path))


# -- writing a generic record ------------------------------------------------------------------------------------
def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def new_record(benchmark: str, device: str, command: str, results: list[dict], notes: str = "",
               versions: dict | None = None) -> dict:
    """A generic record with date (now, UTC), commit (HEAD, "+dirty" with uncommitted edits) and the versions of
    python and torch (and triton, if importable) filled in; ``versions`` adds or overrides."""
    import torch

    vers = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        vers["triton"] = triton.__version__
    except ImportError:
        pass
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    rec = {"benchmark": benchmark, "device": device,
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": _commit(_git("rev-parse", "--short", "HEAD") or None, dirty), "command": command,
           "versions": {k: v for k, v in {**vers, **(versions or {})}.items() if v is not None}, "results": results}
    if notes:
        rec["notes"] = notes
    return rec


def write_result(record: dict, kind: str, out: str | None = None) -> str:
    """Write ``record`` to ``out``, or as ``benchmarks/results/<kind>-<device>-<day>.json``; returns the path."""
    path = out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                               f"{kind}-{device_slug(record['device'])}-{record['date'][:10]}.json")
    write_record(path, record)
    return path


def write_record(path: str, record: dict) -> None:
    """Write ``record`` (from ``new_record``) after checking it reads back as one."""
    from mmearth_kernels.files import write_atomically

    _from_generic(path, record)
    write_atomically(path, lambda f: f.write((json.dumps(record, indent=1) + "\n").encode()))
