"""``python -m train.report RUN [RUN ...]``: runs side by side, and a picture of their img/s and loss per step.

Reads each run folder's ``summary.json`` (written at the end of a run) and ``metrics.jsonl``. "Dense vs sparse on my
data" is two runs and this command::

    python -m train --preset demo --backend dense --out runs/dense --steps 100
    python -m train --preset demo --backend sparse --out runs/sparse --steps 100
    python -m train.report runs/dense runs/sparse          # table + runs-report.png

Ratios are to the first run. Runs on different devices are compared with a warning: their numbers are not
comparable, only their trends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .summary import ROWS, field


class ReportError(ValueError):
    """A run folder that cannot be reported: the message names it and says what is missing."""


def load_run(folder: str) -> dict:
    path = os.path.join(folder, "summary.json")
    if not os.path.isdir(folder):
        raise ReportError(f"{folder}: no such run folder")
    if not os.path.isfile(path):
        raise ReportError(f"{folder}: no summary.json (written when a run ends; was this run stopped early?)")
    try:
        with open(path) as f:
            summary = json.load(f)
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: not a readable summary ({e})") from None
    if not isinstance(summary, dict) or "img_per_s" not in summary:
        raise ReportError(f"{path}: not a run summary of this trainer")
    metrics = []
    try:
        with open(os.path.join(folder, "metrics.jsonl")) as f:
            for line in f:
                try:
                    metrics.append(json.loads(line))
                except ValueError:  # a line cut by a kill: the records before it still count
                    break
    except OSError:
        pass
    return {"folder": folder, "summary": summary, "metrics": metrics}


def table(runs: list[dict]) -> str:
    names = [os.path.basename(os.path.normpath(r["folder"])) or r["folder"] for r in runs]
    rows = [("run", names)] + [(label, [field(r["summary"], label, key, fmt) for r in runs])
                               for label, key, fmt in ROWS]
    base = runs[0]["summary"]
    for key, label in (("img_per_s", "img/s vs first"), ("tflops", "TFLOP/s vs first")):
        if base.get(key):
            rows.append((label, [f"{r['summary'][key] / base[key]:.2f}x" if r["summary"].get(key) else "-"
                                 for r in runs]))
    width = max(len(label) for label, _ in rows)
    cols = [max(len(v[i]) for _, v in rows) for i in range(len(runs))]
    return "\n".join(f"{label:<{width}}  " + "  ".join(f"{v:<{c}}" for v, c in zip(vals, cols)) for label, vals in rows)


def plot(runs: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .files import write_atomically

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        m = [x for x in r["metrics"] if "step" in x]
        label = f"{os.path.basename(os.path.normpath(r['folder']))} ({r['summary'].get('backend')})"
        ax1.plot([x["step"] for x in m], [x.get("img_per_s") for x in m], marker="o", label=label)
        ax2.plot([x["step"] for x in m], [x.get("loss") for x in m], marker="o", label=label)
    ax1.set(xlabel="optimiser step", ylabel="images / s", title="throughput per logging window")
    ax2.set(xlabel="optimiser step", ylabel="loss", title="training loss")
    ax1.legend()
    fig.tight_layout()
    write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m train.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="run folders (the trainer's --out)")
    ap.add_argument("--png", default="runs-report.png", help="where to write the picture (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        runs = [load_run(f) for f in args.runs]
    except ReportError as e:
        print(f"[report] error: {e}", file=sys.stderr)
        return 2
    devices = {r["summary"].get("device_name") for r in runs}
    if len(devices) > 1:
        print(f"[report] warning: the runs ran on different devices ({'; '.join(map(str, devices))}): compare "
              "trends, not numbers", file=sys.stderr)
    print(table(runs))
    if os.path.isdir(args.png):
        print(f"[report] error: --png {args.png} is a folder; give a file name", file=sys.stderr)
        return 2
    plot(runs, args.png)
    print(f"[report] picture: {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
