"""Where the run's records go: ``metrics.jsonl`` (one JSON line per logging point), TensorBoard (when installed:
``tensorboard --logdir OUT/tb``) and the progress bar. Only the main process writes."""

from __future__ import annotations

import json
import os
import sys

from tqdm import tqdm


class Sinks:
    def __init__(self, out: str, enabled: bool, total: int, initial: int, progress: bool):
        self.enabled = enabled
        self.metrics = open(os.path.join(out, "metrics.jsonl"), "a") if enabled else None
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(out, "tb"))
            except ImportError:
                pass
        self.bar = tqdm(total=total, initial=initial, disable=not (enabled and progress), unit="step",
                        dynamic_ncols=True)

    def step(self) -> None:
        self.bar.update(1)

    def log(self, rec: dict) -> None:
        """One record: a JSON line, its numbers as TensorBoard scalars (nested dicts as ``key/sub``), and the
        bar's postfix (loss, img/s, MFU)."""
        if not self.enabled:
            return
        self.metrics.write(json.dumps(rec) + "\n")
        self.metrics.flush()
        if self.tb is not None:
            for key, v in _scalars(rec):
                self.tb.add_scalar(key, v, rec["step"])
        post = {"loss": f"{rec['loss']:.3f}", "img_s": f"{rec['img_per_s']:.0f}"}
        if rec.get("mfu_pct") is not None:
            post["mfu"] = f"{rec['mfu_pct']:.2g}%"
        self.bar.set_postfix(post)

    def say(self, line: str) -> None:
        """A message that does not break the progress bar."""
        if self.enabled:
            tqdm.write(line, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _scalars(rec: dict, prefix: str = ""):
    for k, v in rec.items():
        if k == "step":
            continue
        if isinstance(v, dict):
            yield from _scalars(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield prefix + k, v
