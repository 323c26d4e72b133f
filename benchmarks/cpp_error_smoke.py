"""Does a C++ error raised inside our extension reach Python as an exception, or kill the process?

On the lent GPU machine (2026-11-28, torch 2.11, extension built with the image's CC/CXX =
/opt/gcc) the first TORCH_CHECK that fired inside ``mmearth_kernels._C`` took the whole pytest run
down with a segmentation fault (in torch's dispatcher, while the error was being raised). An
extension whose errors crash is unusable, and a crashed test run hides every later result, so
gpu_check.sh runs this right after the build and rebuilds with another host compiler if it fails.

Each probe runs in a fresh interpreter so a crash is observed as a signal, not suffered. Exit 0
when every probe raised a Python exception, 1 when any of ours crashed, 2 when the extension is
not built. torch's own C++ error is probed too: if that crashes as well, the fault is in the
environment, not in our build.

Usage: python benchmarks/cpp_error_smoke.py
"""

from __future__ import annotations

import signal
import subprocess
import sys

import torch

PROBES = {
    "torch's own C++ error (cpu)": "torch.ones(2) @ torch.ones(3)",
    "our C++ check, CPU kernel": (
        "import mmearth_kernels as mk; x = torch.randn(5, 8); g = torch.ones(8);"
        "torch.ops.mmearth_kernels.grn(x, g, g, torch.tensor([0, 6], dtype=torch.int32), 1e-6, False)"),
}
if torch.cuda.is_available():
    PROBES["our C++ check, CUDA kernel"] = (
        "import mmearth_kernels as mk; x = torch.randn(5, 8, device='cuda'); g = torch.ones(8, device='cuda');"
        "torch.ops.mmearth_kernels.grn(x, g, g, torch.tensor([0, 5], dtype=torch.int32, device='cuda'),"
        " -1.0, False)")  # a negative eps: rejected by the C++ checks shared by the CUDA path

WRAP = """
import torch
try:
    {code}
except Exception as e:
    print(type(e).__name__ + ": " + str(e).splitlines()[0][:120])
    raise SystemExit(0)
print("no error was raised")
raise SystemExit(3)
"""


def run_probe(code: str) -> tuple[str, bool]:
    """(what happened, crashed?) for one probe in a fresh interpreter."""
    p = subprocess.run([sys.executable, "-c", WRAP.format(code=code)], capture_output=True, text=True, timeout=120)
    if p.returncode < 0:
        return f"CRASHED with {signal.Signals(-p.returncode).name}", True
    if p.returncode == 0:
        return "raised " + p.stdout.strip().splitlines()[-1], False
    tail = (p.stdout + p.stderr).strip().splitlines()[-1:] or ["(no output)"]
    return f"exit {p.returncode}: {tail[0][:160]}", p.returncode != 3


def main() -> int:
    from mmearth_kernels import _extension

    if not _extension.LOADED:
        print(f"  the extension is not loaded ({_extension.LOAD_ERROR}): nothing to check")
        return 2
    ours_crashed = False
    for name, code in PROBES.items():
        what, crashed = run_probe(code)
        print(f"  {name:32s} {what}")
        ours_crashed |= crashed and name.startswith("our")
    return 1 if ours_crashed else 0


if __name__ == "__main__":
    sys.exit(main())
