"""Device, versions and measured copy bandwidth, as JSON (for benchmarks/gpu_check.sh).

    python benchmarks/gpu_env.py [--out env.json]

Copy bandwidth: a device-to-device copy of 1 GiB, median of 20 timed with CUDA events, counting
bytes read and written (the ceiling a memory-bound kernel is judged against).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import date

import torch

from mmearth_kernels.files import write_atomically


def copy_bandwidth_gbs(nbytes=1 << 30, repeats=20):
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * nbytes / sorted(times)[len(times) // 2] / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        sha = "unknown"
    info = {"date": date.today().isoformat(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "triton": triton_version, "python": platform.python_version(), "gpu": None, "commit": sha,
            "command": "python benchmarks/gpu_env.py " + " ".join(sys.argv[1:])}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1), copy_gbs=round(copy_bandwidth_gbs(), 1))
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            info["driver"] = None
    text = json.dumps(info, indent=2)
    print(text)
    if args.out:
        write_atomically(args.out, lambda f: f.write((text + "\n").encode()))


if __name__ == "__main__":
    main()
