"""The peak FLOP/s that MFU is measured against: a table of GPU datasheet peaks, a measured peak on CPU, or the
user's ``--peak-tflops``.

GPU peaks are *dense* tensor-core (bf16) and CUDA-core (fp32) TFLOP/s at boost clock, per GPU. Sources: NVIDIA
datasheets (H100/H200: "H100 Tensor Core GPU" and "H200" datasheets, whose tensor figures are printed *with
sparsity*: halved here, as their footnote says; A100 80GB; L4; L40S; RTX A6000; RTX 6000 Ada; RTX PRO 6000
Blackwell; B200 (HGX)); the RTX 4090 from the Ada Lovelace architecture whitepaper's FP32-accumulate figure, which
is what bf16 autocast uses (Lightning's table has 82.6, the FP32 CUDA-core rate: 2x too low). torchtitan's
``get_peak_flops`` agrees on H100/H200/A100/L40S/B200. Values marked (derived) come from headline FP8/FP4 sparse
figures divided by 4 or 8, not from a bf16 line of a datasheet. An fp32 run on Ampere or newer uses the TF32
tensor-core peak when torch lets fp32 matmuls use TF32 (``torch.get_float32_matmul_precision() != "highest"``).
An unknown GPU gets no MFU (never a silent fallback to another card's peak); ``--peak-tflops`` sets one.
"""

from __future__ import annotations

import re
import statistics
import time
from dataclasses import dataclass

import torch

# regex on the lower-cased device name (the first match wins) -> (bf16 dense, tf32 dense, fp32) TFLOP/s;
# None where no source gives the figure (then that precision gets no MFU)
GPU_PEAKS: tuple[tuple[str, tuple[float, float | None, float | None]], ...] = (
    (r"h200.*nvl", (840.0, 420.0, 60.0)),         # H200 NVL (Lightning's table)
    (r"h200", (989.0, 494.7, 67.0)),              # H200 SXM 141 GB
    (r"h100.*pcie", (756.0, 378.0, 51.0)),
    (r"h100.*nvl", (835.0, 417.5, 60.0)),
    (r"h100", (989.0, 494.7, 67.0)),              # H100 SXM (HBM3)
    (r"gb[23]00", (2500.0, None, None)),          # torchtitan; no dense TF32/FP32 line found
    (r"b[23]00", (2250.0, 1100.0, 75.0)),         # HGX B200 per GPU; fp32 75-80 by datasheet revision
    (r"a100", (312.0, 156.0, 19.5)),
    (r"l40s", (362.05, 183.0, 91.6)),
    (r"\bl4\b", (121.0, 60.0, 30.3)),
    (r"rtx pro 6000", (503.8, 251.9, 125.0)),     # Workstation edition (derived: 4,000 AI TOPS FP4 sparse / 8)
    (r"rtx 6000 ada", (364.2, 182.1, 91.1)),      # (derived: 1,457 FP8 sparse / 4)
    (r"rtx a6000", (154.8, 77.4, 38.7)),          # the datasheet's 309.7 is with sparsity
    (r"4090", (165.2, 82.6, 82.6)),               # FP32-accumulate tensor rate
)


@dataclass(frozen=True)
class Peak:
    """The denominator of MFU: ``tflops`` (None: unknown, no MFU) and where it came from."""
    tflops: float | None
    source: str


def gpu_peak(name: str, precision: str) -> Peak:
    """The table's dense peak for a GPU name (``torch.cuda.get_device_name()``) and run precision."""
    low = name.lower()
    for pattern, (bf16, tf32, fp32) in GPU_PEAKS:
        if re.search(pattern, low):
            if precision == "bf16":
                value, what = bf16, "bf16 dense tensor-core peak"
            elif torch.get_float32_matmul_precision() != "highest":
                value, what = tf32, "TF32 dense tensor-core peak (fp32 matmuls may use TF32)"
            else:
                value, what = fp32, "fp32 CUDA-core peak"
            if value is None:
                return Peak(None, f"{name}: the table has no {what}; pass --peak-tflops for MFU")
            return Peak(value, f"{name}: {what} (datasheet table, train/hardware.py)")
    return Peak(None, f"{name}: not in the peak table (train/hardware.py); pass --peak-tflops for MFU")


def measure_cpu_peak(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.3) -> Peak:
    """Measured, not guessed: the median FLOP/s of ``n`` x ``n`` matmuls on this process's threads for about
    ``seconds`` (after a warm-up call). A guess from cores x GHz x SIMD width misses turbo bins and AVX-512 clock
    offsets; this is what the CPU really sustains on a GEMM."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)  # warm-up: thread pool, packing buffers
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 3:
        t = time.perf_counter()
        torch.mm(a, b)
        rates.append(2 * n ** 3 / (time.perf_counter() - t))
    isa = torch.backends.cpu.get_cpu_capability()
    tf = statistics.median(rates) / 1e12
    name = str(dtype).replace("torch.", "")
    return Peak(tf, f"measured at start: median of {len(rates)} {n}x{n} {name} matmuls on {torch.get_num_threads()} "
                    f"thread(s), {isa}")


def resolve_peak(device: str, precision: str, override: float = 0.0) -> Peak:
    """``override`` (``--peak-tflops``) if given; else the GPU table, or a measurement on CPU."""
    if override > 0:
        return Peak(float(override), "given by --peak-tflops")
    if device == "cuda":
        return gpu_peak(torch.cuda.get_device_name(), precision)
    return measure_cpu_peak(torch.bfloat16 if precision == "bf16" else torch.float32)
