"""Builds the one extension, ``mmearth_kernels._C``.

* C++ CPU kernels (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) always.
* CUDA kernels (``csrc/cuda/*.cu``) whenever torch was built with CUDA and a CUDA toolkit is found,
  with or without a visible GPU (so a ``.cu`` that does not compile fails CI).

Environment:
  MMEARTH_NO_EXT=1      build no extension at all (pure-Python install; ops fall back to ``impl="ref"``)
  MMEARTH_NO_CUDA=1     build the CPU kernels only
  CUDA_HOME / CUDA_PATH the CUDA toolkit root to use (must contain include/cuda_runtime.h)
  TORCH_CUDA_ARCH_LIST  GPU architectures (default: the visible GPUs, else "8.0;9.0+PTX")
  MAX_JOBS              parallel compile jobs (ninja)
  DEBUG=1               -O0 -g

Install with ``pip install --no-build-isolation -e .`` so the build uses the torch you already have.
"""

import glob
import os
import re
import shutil
import subprocess
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0+PTX"  # sm_80 runs on all Ampere/Ada, sm_90 on Hopper, PTX JITs on newer GPUs


def log(msg):
    print(f"[mmearth_kernels setup] {msg}", file=sys.stderr, flush=True)


def env_flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _has_headers(root):
    return bool(root) and os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))


def _toolkit_version(root):
    """CUDA version of a toolkit root as 'major.minor', or None."""
    nvcc = os.path.join(root, "bin", "nvcc")
    if not os.path.isfile(nvcc):
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def find_cuda_toolkit(torch_cuda):
    """Return (root, reason). Honour CUDA_HOME/CUDA_PATH, then look for a root with headers.

    `nvcc` on the PATH can be a wrapper script (as on our dev machines), so torch's guess of
    dirname(dirname(which nvcc)) may have no headers; we check candidates for include/cuda_runtime.h.
    """
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root:
            if _has_headers(root):
                return root, f"from ${var}"
            log(f"${var}={root} has no include/cuda_runtime.h; ignoring it")
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        # A wrapper script usually execs the real nvcc: look for a path inside it.
        try:
            with open(nvcc, "r", errors="ignore") as f:
                head = f.read(4096)
            for m in re.finditer(r"(/[\w./+-]+)/bin/nvcc", head):
                candidates.append(m.group(1))
        except OSError:
            pass
    if torch_cuda:
        candidates.append(f"/usr/local/cuda-{torch_cuda}")
    candidates += ["/usr/local/cuda", "/opt/cuda", "/usr/lib/cuda", "/usr"]
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    seen = set()
    usable = []
    for root in candidates:
        root = os.path.normpath(root)
        if root in seen:
            continue
        seen.add(root)
        if _has_headers(root) and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            usable.append(root)
    if not usable:
        return None, "no CUDA toolkit with include/cuda_runtime.h and bin/nvcc was found (set CUDA_HOME)"
    # Prefer a toolkit whose major version matches torch's CUDA.
    if torch_cuda:
        major = torch_cuda.split(".")[0]
        for root in usable:
            v = _toolkit_version(root)
            if v and v.split(".")[0] == major:
                return root, f"found by search (CUDA {v}, torch built with {torch_cuda})"
    return usable[0], "found by search"


def extensions():
    if env_flag("MMEARTH_NO_EXT"):
        log("MMEARTH_NO_EXT=1: building no extension; the ops will only offer impl='ref'")
        return [], {}
    import torch  # imported late so that MMEARTH_NO_EXT installs need no torch at build time

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    debug = env_flag("DEBUG")
    cxx = ["-O0", "-g"] if debug else ["-O3"]
    # -ffp-contract=fast: torch builds in ISO C++ mode, which would forbid fusing a*b+c into one FMA.
    # -fno-tree-loop-distribute-patterns: keep short tail loops inline instead of memcpy calls,
    # which would force the register accumulators of the CPU kernels onto the stack.
    # the C++ standard is chosen by torch (C++17 or C++20)
    # -fopenmp: at::parallel_for is a header template that is serial unless _OPENMP is defined here (torch's
    # own libgomp, already loaded by `import torch`, then runs it; same soname, so one OpenMP runtime).
    cxx += ["-fvisibility=hidden", "-Wno-psabi", "-ffp-contract=fast", "-fno-tree-loop-distribute-patterns", "-fopenmp"]
    define_macros = []

    use_cuda, why = False, ""
    if env_flag("MMEARTH_NO_CUDA"):
        why = "MMEARTH_NO_CUDA=1"
    elif not torch.version.cuda:
        why = f"torch {torch.__version__} was built without CUDA"
    else:
        root, how = find_cuda_toolkit(torch.version.cuda)
        if root is None:
            why = how
        else:
            use_cuda = True
            os.environ["CUDA_HOME"] = root
            log(f"CUDA toolkit: {root} ({how}); torch built with CUDA {torch.version.cuda}")

    import torch.utils.cpp_extension as cpp_ext

    if use_cuda:
        cpp_ext.CUDA_HOME = os.environ["CUDA_HOME"]  # torch guessed it at import time, maybe wrongly
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            if torch.cuda.is_available():
                caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
                os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a}.{b}" for a, b in caps)
            else:
                os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCH_LIST
        log(f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("MMEARTH_WITH_CUDA", None))
        nvcc = ["-O0", "-g", "-G"] if debug else ["-O3", "--use_fast_math"]
        nvcc += ["-lineinfo"]
        ext = cpp_ext.CUDAExtension(
            "mmearth_kernels._C",
            sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            extra_link_args=["-fopenmp"],
        )
    else:
        log(f"building the CPU kernels only: {why}")
        ext = cpp_ext.CppExtension("mmearth_kernels._C", sources, define_macros=define_macros,
                                   extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": cpp_ext.BuildExtension}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
