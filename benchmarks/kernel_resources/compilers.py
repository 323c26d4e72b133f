"""The two compilers, run in worker processes: Triton (``triton.compile`` for a GPU target, no GPU needed) and nvcc
(``-cubin -Xptxas -v`` on each ``csrc/cuda/*.cu``). Each job returns rows of resources for the record."""

from __future__ import annotations

import ast
import contextlib
import glob
import hashlib
import importlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass

from .ptxas import parse_ptxas

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
GENCODE = {"sm_90a": "arch=compute_90a,code=sm_90a", "sm_80": "arch=compute_80,code=sm_80"}
CAPABILITY = {"sm_90a": 90, "sm_80": 80}
WARM_ENV = "MMEARTH_KERNEL_RESOURCES_WARM"  # set by --warm-cache for the worker processes


def compile_triton(job) -> list[dict]:
    """Compile one :class:`scenarios.TritonJob` as the launcher would on a GPU of ``job.arch``, and read the
    resources from the log of the ptxas run that Triton itself makes (``-v`` is among its flags; the log is printed
    when ``knobs.nvidia.dump_ptxas_log`` is set), so the numbers are those of the exact binary a launch loads."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .discover import jit_function

    fn = jit_function(getattr(importlib.import_module(job.module), job.attr))
    if os.environ.get(WARM_ENV) == "1":  # --warm-cache: fill TRITON_CACHE_DIR as the launch would, read nothing
        triton.compile(ASTSource(fn, job.signature, job.constexprs, job.attrs),
                       target=GPUTarget("cuda", CAPABILITY[job.arch], 32), options=job.options)
        return []
    triton.knobs.nvidia.dump_ptxas_log = True
    triton.knobs.compilation.always_compile = True  # a cache hit would skip ptxas, and its log
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        kernel = triton.compile(ASTSource(fn, job.signature, job.constexprs, job.attrs),
                                target=GPUTarget("cuda", CAPABILITY[job.arch], 32), options=job.options)
    seconds = time.perf_counter() - start
    entries = parse_ptxas(log.getvalue())
    if kernel.metadata.name not in entries:
        raise RuntimeError(f"no ptxas -v entry for {kernel.metadata.name} in: {log.getvalue()[-500:]!r}")
    e = entries[kernel.metadata.name]
    return [dict(registers=e.registers, spill_stores=e.spill_stores, spill_loads=e.spill_loads,
                 stack_bytes=e.stack_bytes,
                 # Triton's shared memory is dynamic (metadata.shared); ptxas counts only the static part
                 shared_bytes=kernel.metadata.shared + e.smem_bytes, threads=kernel.metadata.num_warps * 32,
                 compile_s=round(seconds, 2))]


# ---------------------------------------------------------------------------------------------------- CUDA (nvcc)

def setup_nvcc_flags() -> list[str]:
    """setup.py's release nvcc flags (its ``nvcc`` list in the non-debug branch, and what it appends), read from its
    source so that this check always compiles with the flags the extension is built with."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    body = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == "extensions"]
    flags = None
    for node in ast.walk(body[0]) if body else ():
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "nvcc" for t in node.targets):
            value = node.value.orelse if isinstance(node.value, ast.IfExp) else node.value
            flags = list(ast.literal_eval(value))
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name) and node.target.id == "nvcc":
            if flags is None:
                break
            flags += ast.literal_eval(node.value)
    if not flags:
        raise RuntimeError("cannot find the nvcc flags in setup.py (`nvcc = [...] if debug else [...]`, then "
                           "`nvcc += [...]`): update benchmarks/kernel_resources/compilers.py to its new form")
    return flags


def nvcc_path() -> str:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    path = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not path or not os.path.exists(path):
        raise FileNotFoundError("nvcc not found (set CUDA_HOME or put nvcc on the PATH)")
    return path


def nvcc_command(source: str, arch: str, out: str) -> list[str]:
    """nvcc for one .cu file: torch's extension flags and include paths, setup.py's flags, one architecture."""
    import torch.utils.cpp_extension as cpp_ext

    includes = [f"-I{p}" for p in cpp_ext.include_paths()]  # torch's headers; nvcc knows its own CUDA headers
    # C++20: what torch's BuildExtension passes to nvcc for this torch (its headers need it)
    return [nvcc_path(), "-cubin", f"-gencode={GENCODE[arch]}", "-Xptxas", "-v", "-std=c++20",
            *cpp_ext.COMMON_NVCC_FLAGS, *setup_nvcc_flags(), "-DMMEARTH_WITH_CUDA", *includes, source, "-o", out]


def block_threads() -> int:
    """kThreads of csrc/cuda/launch.cuh: the block size every CUDA kernel is launched with (GRN's per-channel
    kernels launch fewer when C < kThreads; the estimate uses the largest)."""
    text = open(os.path.join(CUDA_DIR, "launch.cuh")).read()
    m = re.search(r"constexpr\s+int\s+kThreads\s*=\s*(\d+)\s*;", text)
    if not m:
        raise RuntimeError("kThreads not found in csrc/cuda/launch.cuh")
    return int(m.group(1))


@dataclass
class CudaJob:
    source: str  # relative to the repository root
    arch: str
    key: str

    @property
    def label(self) -> str:
        return f"{self.source} {self.arch}"


def cuda_jobs(archs=("sm_90a",)) -> list[CudaJob]:
    """One job per .cu file and architecture; the key covers the file and the headers it may include."""
    sources = sorted(glob.glob(os.path.join(CUDA_DIR, "*.cu")))
    headers = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.h")) + glob.glob(os.path.join(CUDA_DIR, "*.cuh")))
    shared = hashlib.sha256(b"".join(open(h, "rb").read() for h in headers)).hexdigest()
    out = []
    for src in sources:
        digest = hashlib.sha256(open(src, "rb").read() + shared.encode()).hexdigest()[:16]
        for arch in archs:
            out.append(CudaJob(os.path.relpath(src, ROOT), arch, f"{digest}-{arch}"))
    return out


_TYPES = {"float": "fp32", "double": "fp64", "c10::Half": "fp16", "c10::BFloat16": "bf16"}


def short_name(demangled: str) -> tuple[str, str]:
    """("dwconv_wgrad_partial_kernel_k<float, float, 7>", "fp32") from a demangled kernel signature: no return type,
    namespaces or parameters; the dtype is the first template argument's."""
    head = demangled.replace("(anonymous namespace)::", "").split("(", 1)[0].strip().removeprefix("void ")
    name = re.sub(r"^(\w+::)+", "", head)
    m = re.search(r"<\s*([\w:]+)", name)
    return name, (_TYPES.get(m.group(1), m.group(1)) if m else "")


def demangle(names: list[str]) -> list[str]:
    filt = shutil.which("c++filt")
    if not filt or not names:
        return names
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True, timeout=60).stdout
    lines = out.splitlines()
    return lines if len(lines) == len(names) else names


def compile_cuda(job: CudaJob) -> list[dict]:
    """nvcc -cubin -Xptxas -v on one file: a row per kernel (template instantiation) it defines."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = nvcc_command(os.path.join(ROOT, job.source), job.arch, os.path.join(tmp, "out.cubin"))
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-2000:]}")
    entries = parse_ptxas(proc.stderr + proc.stdout)
    if not entries:
        raise RuntimeError(f"no ptxas -v entries in nvcc's output: {proc.stderr[-500:]!r}")
    threads = block_threads()
    rows = []
    for mangled, full in zip(entries, demangle(list(entries))):
        e = entries[mangled]
        name, dtype = short_name(full)
        rows.append(dict(kernel=f"{os.path.basename(job.source)}:{name}", dtype=dtype, registers=e.registers,
                         spill_stores=e.spill_stores, spill_loads=e.spill_loads, stack_bytes=e.stack_bytes,
                         shared_bytes=e.smem_bytes, threads=threads, compile_s=round(seconds, 2),
                         compile_s_is="the whole file"))
    return rows
