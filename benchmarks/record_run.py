"""``python -m benchmarks.record_run RUN [--out PATH]``: a trainer run folder as a record for ``benchmarks/results/``.

A run of ``python -m train`` writes ``summary.json`` at its end, ``metrics.jsonl`` (one line per logging window)
and, with ``--profile-steps``, ``profile/ops.json``. This turns them into one record (benchmark ``train_run``):
the windows are its rows, the summary and the profile's op table ride along, and the command is the run's own.
``python -m benchmarks.render`` shows it (the ``train-run`` block prints the summary as the trainer does, and the
time-by-category table); the GPU check records its trainer run this way too.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

from .records import new_record, write_result

# per-window fields kept as the record's rows (losses per task and weights stay in the run's metrics.jsonl)
WINDOW = ("step", "loss", "img_per_s", "patches_per_s", "step_ms", "step_ms_p90", "data_wait_pct", "tflops",
          "tflops_executed", "mfu_pct", "peak_mem_gib", "peak_reserved_gib", "health_std", "health_rank")


class RunError(ValueError):
    """A folder that is not a finished trainer run; the message says what is missing."""


def _read_json(path: str, what: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise RunError(f"{path}: cannot read the run's {what} ({e})") from None


def run_record(run_dir: str) -> dict:
    summary = _read_json(os.path.join(run_dir, "summary.json"), "summary (written when a run ends)")
    rows = []
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:  # a line a kill cut short
                    break
                rows.append({k: rec[k] for k in WINDOW if k in rec})
    except OSError as e:
        raise RunError(f"{run_dir}: no metrics.jsonl ({e.strerror})") from None
    device = summary["device_name"] if summary["device"] == "cuda" else _cpu_device(summary)
    record = new_record("train_run", device, summary.get("command") or "python -m train", rows,
                        versions={k: v for k, v in summary["versions"].items() if isinstance(v, str)})
    record["date"] = datetime.datetime.fromtimestamp(os.path.getmtime(os.path.join(run_dir, "summary.json")),
                                                     datetime.timezone.utc).isoformat(timespec="seconds")
    c = summary.get("commit") or {}
    if c.get("sha"):
        record["commit"] = c["sha"] + ("+dirty" if c.get("dirty") else "")
    record["summary"] = {k: v for k, v in summary.items() if k not in ("config", "out")}
    profile = os.path.join(run_dir, "profile", "ops.json")
    if os.path.isfile(profile):
        record["profile"] = _read_json(profile, "profile table")
    return record


def _cpu_device(summary: dict) -> str:
    from .records import cpu_label

    return cpu_label(summary["device_name"].split(" (")[0], os.cpu_count())


def main(argv=None) -> int:
    from train.data.cli import ArgumentParser

    ap = ArgumentParser(prog="python -m benchmarks.record_run", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="a trainer run folder (its --out)")
    ap.add_argument("--out", help="the record to write (default: benchmarks/results/train-run-<device>-<date>.json)")
    args = ap.parse_args(argv)
    try:
        rec = run_record(args.run)
    except RunError as e:
        print(f"record_run: error: {e}", file=sys.stderr)
        return 2
    print(f"record_run: wrote {write_result(rec, 'train-run', args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
