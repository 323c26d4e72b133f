#!/usr/bin/env bash
# Idempotent set-up, sourced by scripts/demo.sh and scripts/test.sh:
#   * a virtual environment in .venv (it sees an already-installed torch, so nothing is downloaded twice);
#   * torch, numpy, pytest, pytest-benchmark, pytest-xdist (the interpreter step), ninja when missing;
#   * the package, editable, with its C++/CUDA extension built against that torch; rebuilt only
#     when csrc/, setup.py or pyproject.toml changed since the last build (or the build is missing).
# Environment: PYTHON (interpreter for the venv, default python3), MMEARTH_VENV (default .venv),
# MMEARTH_NO_CUDA=1 / MMEARTH_NO_EXT=1 (see setup.py), MAX_JOBS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${MMEARTH_VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "${PYTHON:-python3}" -m venv --system-site-packages "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

if ! python -c "import torch, numpy, h5py, tqdm, matplotlib, safetensors, pytest, pytest_benchmark, xdist, ninja, setuptools, wheel, ruff" 2>/dev/null; then
  echo "[setup] installing torch, numpy, h5py, tqdm, matplotlib, safetensors, pytest, pytest-benchmark, pytest-xdist, ninja, ruff (torch is large: a few minutes)"
  python -m pip install -q --disable-pip-version-check torch numpy h5py tqdm matplotlib safetensors pytest pytest-benchmark pytest-xdist ninja ruff "setuptools>=64" wheel
fi
# The interop tests run against the real libraries (timm's ConvNeXt V2, torchgeo's MMEarth dataset)
if ! python -c "import timm, torchgeo" 2>/dev/null; then
  echo "[setup] installing timm and torchgeo (interop tests)"
  python -m pip install -q --disable-pip-version-check timm torchgeo
fi

stamp_file="$VENV/.mmearth_build_stamp"
stamp="$( (cat setup.py pyproject.toml; find csrc -type f | LC_ALL=C sort | xargs cat; \
           echo "${MMEARTH_NO_CUDA:-}${MMEARTH_NO_EXT:-}") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ] || ! python -c "import mmearth_kernels" 2>/dev/null \
   || { [ "${MMEARTH_NO_EXT:-}" != "1" ] && ! python -c "import mmearth_kernels._C" 2>/dev/null; }; then
  echo "[setup] building mmearth_kernels (C++ CPU kernels, and CUDA kernels when a toolkit is found)"
  log="$VENV/build.log"
  if ! MAX_JOBS="${MAX_JOBS:-$(nproc)}" python -m pip install -v --disable-pip-version-check --no-build-isolation \
      --no-deps -e . > "$log" 2>&1; then
    tail -n 60 "$log"
    echo "[setup] the build failed; full log: $log" >&2
    exit 1
  fi
  grep -h "\[mmearth_kernels setup\]" "$log" | awk '!seen[$0]++' || true
  echo "$stamp" > "$stamp_file"
fi
