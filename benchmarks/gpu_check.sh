#!/usr/bin/env bash
# The one-command GPU check, for a lent H100/H200 (torch + triton preinstalled, no network, nvcc present):
#   bash benchmarks/gpu_check.sh [OUT_DIR]     (default: $OUT if set, else benchmarks/results/gpu-check)
# Its plan (phases, time boxes, test selections) is benchmarks/gpu_check.py: `python -m benchmarks.gpu_check plan`.
# This script does what must happen before Python may import the extension:
#   1. build it in place for the visible GPU, while every Triton kernel is compiled for that GPU in parallel
#      processes into a cache inside the run (TRITON_CACHE_DIR), so the measured phases never JIT; check that a
#      C++ error raised inside the extension reaches Python, else rebuild once with the system compiler;
# then runs phases 2-7 (python -m benchmarks.gpu_check run) inside one deadline (500 s from the start), and packs
# the results: on the device tool's $OUT (at most 8 files come back) one tarball with everything plus the records,
# which `python -m benchmarks.render` reads unchanged once copied into benchmarks/results/.
# MMEARTH_GPU_CHECK_DRY_RUN=1 runs it all on a CPU box with smoke sizes (CI does, so nothing rots between GPU
# runs); MMEARTH_GPU_CHECK_SKIP_BUILD=1 reuses the build that is there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/results/gpu-check}}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python3}"
DRY="${MMEARTH_GPU_CHECK_DRY_RUN:-0}"
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [ "$DRY" != "1" ]; then
    echo "gpu_check: no CUDA GPU visible to torch; run it on a GPU machine (or MMEARTH_GPU_CHECK_DRY_RUN=1)" >&2
    exit 2
  fi
  echo "gpu_check: DRY RUN on a machine without a GPU (smoke sizes)"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -m benchmarks.gpu_check plan || exit 1
BUILD_CAP=$("$PY" -m benchmarks.gpu_check cap build)

build() {  # build [CC CXX]: in-place build inside the build box, log appended to build.log
  local cc="${1:-${CC:-cc}}" cxx="${2:-${CXX:-c++}}"
  echo "host compilers: CC=$cc CXX=$cxx ($("$cxx" --version 2>/dev/null | head -n 1))" >> "$OUT_DIR/build.log"
  CC="$cc" CXX="$cxx" MAX_JOBS="${MAX_JOBS:-12}" timeout -s INT -k 10 "$BUILD_CAP" \
    "$PY" setup.py build_ext --inplace >> "$OUT_DIR/build.log" 2>&1
}
stamp "build (box ${BUILD_CAP} s), Triton kernels compiled for this GPU meanwhile"
export TRITON_CACHE_DIR="$OUT_DIR/triton-cache"
# compiles into TRITON_CACHE_DIR every launch of the measured phases (batch 256) as the runtime will, so it finds
# each kernel there; a dry run warms a slice for sm_90a (no GPU to detect) to keep the path exercised
WARM=(--workers 4 --dtypes bf16,fp32)
[ "$DRY" = "1" ] && WARM=(--workers 2 --arch sm_90a --models atto --dtypes bf16)
MMEARTH_BENCH_BATCH=256 timeout -s INT -k 5 "$BUILD_CAP" "$PY" -m benchmarks.kernel_resources --warm-cache "${WARM[@]}" \
  > "$OUT_DIR/warm-compile.log" 2>&1 &
warm_pid=$!
if [ "${MMEARTH_GPU_CHECK_SKIP_BUILD:-0}" = "1" ]; then
  echo "gpu_check: MMEARTH_GPU_CHECK_SKIP_BUILD=1, using the existing build" >> "$OUT_DIR/build.log"
elif ! build; then
  tail -n 40 "$OUT_DIR/build.log"; echo "gpu_check: build failed (log: $OUT_DIR/build.log)" >&2; exit 1
fi
grep "\[mmearth_kernels setup\]\|host compilers" "$OUT_DIR/build.log"
if ! "$PY" benchmarks/cpp_error_smoke.py; then
  if [ -x /usr/bin/gcc ] && [ -x /usr/bin/g++ ] && [ "${CXX:-}" != /usr/bin/g++ ]; then
    echo "gpu_check: a C++ error crashed the process; rebuilding with /usr/bin/gcc and /usr/bin/g++"
    rm -rf build mmearth_kernels/_C*.so
    build /usr/bin/gcc /usr/bin/g++ || { tail -n 40 "$OUT_DIR/build.log"; exit 1; }
  fi
  "$PY" benchmarks/cpp_error_smoke.py || echo "gpu_check: C++ errors still crash the process (see build.log)"
fi
wait "$warm_pid"; echo "warm compile: $(tail -n 3 "$OUT_DIR/warm-compile.log")"

GPU=$("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu-dry-run')")
NAME="$(echo "$GPU" | tr 'A-Z' 'a-z' | tr -c 'a-z0-9\n' '-' | sed 's/--*/-/g; s/^-//; s/-$//')-$(date +%F)"
"$PY" -m benchmarks.gpu_check run "$OUT_DIR" --name "$NAME" --start "$t0" 2>&1 | tee "$OUT_DIR/gpu_check.log"
rc=${PIPESTATUS[0]}

stamp "done (rc=$rc); records in $OUT_DIR/$NAME-*.json"
if [ -n "${OUT:-}" ] && [ "$OUT_DIR" = "$(cd "$OUT" && pwd)" ]; then
  # the device tool brings back at most 8 files: one tarball with everything, beside it the records and the logs
  (cd "$OUT_DIR" && tar czf /tmp/gpu_check.tgz --exclude="triton-cache" --exclude="train-data" --exclude="*.pt" . \
    && find . -mindepth 1 -maxdepth 1 ! -name "$NAME-*.json" ! -name must.log ! -name gpu_check.log \
      -exec rm -rf {} + && mv /tmp/gpu_check.tgz .)
fi
exit "$rc"
