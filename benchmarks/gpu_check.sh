#!/usr/bin/env bash
# The one-command GPU check, for a lent H100/H200 (torch + triton preinstalled, no network, nvcc present).
# Phases, most decision-relevant first (a phase that runs out of time keeps what it finished):
#   1. build the extension in place for the visible GPU, then check that a C++ error raised inside
#      it reaches Python (benchmarks/cpp_error_smoke.py); if it crashes the process instead, rebuild
#      once with the system compiler (/usr/bin/gcc, g++) and say which build is used,
#   2. device and versions, copy bandwidth,
#   3. the end-to-end training step, graphed against graphed (python -m benchmarks.e2e: atto and tiny,
#      56/8, mask 0.6, bf16, batch 256; sparse (Triton), dense, dense-plain, sparse-fused, sparse (CUDA) as
#      whole-step CUDA graphs, then the same eagerly); every case also records kernels and host launch
#      calls per step and summed kernel time from a profiler trace, so wall time / kernel time says
#      how launch-bound each step still is,
#   4. the CUDA and Triton tests, the CUDA-graph step tests first (graphed = eager, capture errors),
#   5. atto at batch 1024, graphed, and the compiled-graphed variants at batch 256,
#   6. kernel benchmarks (bf16, batch 256, stage 1-2 shapes, fwd and fwd+bwd: dwconv, gelu_grn, grn, dwconv + LN)
#      and the CPU tests under this machine's toolchain.
# Every phase has a time box inside one deadline (MMEARTH_GPU_CHECK_DEADLINE, default 560 s from the
# start), so the whole check fits one 10-minute device call; the e2e JSON is rewritten after each case.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]     (default: $OUT if set, else benchmarks/results)
# When OUT_DIR is the device tool's $OUT (at most 8 files come back), everything is also packed into
# gpu_check.tgz and only the tarball, the tables and the JSON summaries are left beside it.
# MMEARTH_GPU_CHECK_DRY_RUN=1 runs the plumbing on a CPU box (tests as usual, benchmarks in smoke
# mode) to check the script itself before a GPU session; MMEARTH_GPU_CHECK_SKIP_BUILD=1 reuses the build there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$OUT_DIR"
PY="${PYTHON:-python3}"
DRY="${MMEARTH_GPU_CHECK_DRY_RUN:-0}"
t0=$(date +%s)
stamp() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  if [ "$DRY" != "1" ]; then
    echo "gpu_check: no CUDA GPU visible to torch; run it on a GPU machine (or MMEARTH_GPU_CHECK_DRY_RUN=1)" >&2
    exit 2
  fi
  echo "gpu_check: DRY RUN on a machine without a GPU (plumbing only)"
fi

DEADLINE=$(( t0 + ${MMEARTH_GPU_CHECK_DEADLINE:-560} ))
# box CAP: the smaller of CAP seconds and what is left before the deadline (at least 1)
box() { local left=$(( DEADLINE - $(date +%s) )); [ "$left" -lt "$1" ] && echo $(( left > 1 ? left : 1 )) || echo "$1"; }

build() {  # build [CC CXX]: in-place build, log appended to build.log
  ( [ -n "${1:-}" ] && export CC="$1" CXX="$2"
    echo "host compilers: CC=${CC:-cc} CXX=${CXX:-c++} ($("${CXX:-c++}" --version 2>/dev/null | head -n 1))"
    MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py build_ext --inplace ) >> "$OUT_DIR/build.log" 2>&1
}
stamp "build"
if [ "${MMEARTH_GPU_CHECK_SKIP_BUILD:-0}" = "1" ]; then  # dry runs: reuse the build that is there
  echo "gpu_check: MMEARTH_GPU_CHECK_SKIP_BUILD=1, using the existing build" >> "$OUT_DIR/build.log"
elif ! build; then
  tail -n 40 "$OUT_DIR/build.log"; echo "gpu_check: build failed (log: $OUT_DIR/build.log)" >&2; exit 1
fi
grep "\[mmearth_kernels setup\]\|host compilers" "$OUT_DIR/build.log"
so_libs() {  # which C++ runtime and unwinder the extension loads (none listed: linked statically)
  echo "extension links: $(ldd mmearth_kernels/_C*.so 2>/dev/null | grep -oE "lib(stdc\+\+|gcc_s)[^ ]* => [^ ]*" \
    | tr '\n' ' ')"
}
so_libs
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

stamp "C++ errors reach Python?"
crash_isolation=()
if ! "$PY" benchmarks/cpp_error_smoke.py; then
  if [ -x /usr/bin/gcc ] && [ -x /usr/bin/g++ ] && [ "${CXX:-}" != /usr/bin/g++ ]; then
    echo "gpu_check: a C++ error crashed the process; rebuilding with /usr/bin/gcc and /usr/bin/g++"
    rm -rf build mmearth_kernels/_C*.so
    build /usr/bin/gcc /usr/bin/g++ || { tail -n 40 "$OUT_DIR/build.log"; exit 1; }
    grep "host compilers" "$OUT_DIR/build.log" | tail -n 1
    so_libs
  fi
  if ! "$PY" benchmarks/cpp_error_smoke.py; then
    echo "gpu_check: C++ errors still crash; tests run in 4 xdist workers so a crash fails one test, not the run"
    crash_isolation=(-n 4)
  fi
fi

stamp "device and versions"
"$PY" -m mmearth_kernels.info
"$PY" benchmarks/gpu_env.py --out "$OUT_DIR/env.json" || exit 1
# paths go in as arguments, never into the code string (a quote in OUT_DIR would break or inject code)
COPY_GBS=$("$PY" -c "import json, sys; print(json.load(open(sys.argv[1])).get('copy_gbs') or '')" "$OUT_DIR/env.json")
GPU=$("$PY" -c "import json, sys; g = json.load(open(sys.argv[1]))['gpu'] or 'cpu-dry-run'; \
print(''.join(c if c.isalnum() else '-' for c in g.lower()).strip('-'))" "$OUT_DIR/env.json")
NAME="$GPU-$(date +%F)"

PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rfEs --durations=10 "${crash_isolation[@]}")
e2e() {  # e2e NAME CAP ARGS...: one grid into $NAME-e2e-<suffix>.{json,md}; a timeout still reports
  local suffix="$1" cap="$2"; shift 2
  local stem="$OUT_DIR/$NAME-e2e-$suffix" rc=0
  local args=(--out "$OUT_DIR" --name "$NAME-e2e-$suffix" --no-host-cost "$@")
  if [ "$DRY" = "1" ] && [ -z "$COPY_GBS" ]; then args+=(--smoke --no-isolate --device cpu); fi
  timeout -s INT -k 20 "$(box "$cap")" "$PY" -m benchmarks.e2e "${args[@]}" > "$stem.log" 2>&1 || rc=$?
  if [ "$rc" != 0 ] && [ -f "$stem.json" ]; then
    echo "gpu_check: e2e $suffix exited $rc; reporting the cases it finished"
    "$PY" -m benchmarks.e2e --report "$stem.json" > /dev/null 2>&1
  fi
  grep -E "^\| (model|atto|tiny)" "$stem.md" 2>/dev/null || tail -n 15 "$stem.log"
  [ "$rc" = 0 ] || e2e_rc=$rc
}
e2e_rc=0
G256=(--sizes atto,tiny --geometries 56/8 --mask-ratios 0.6 --precisions bf16 --batch 256)

stamp "e2e: graphed sparse vs graphed dense (atto, tiny; bf16, batch 256), then eager"
e2e b256 240 "${G256[@]}" --backends sparse-graphed,dense-graphed,dense-plain-graphed,sparse-fused-graphed,sparse-cuda-graphed,sparse,dense,dense-plain

stamp "tests: CUDA-graph step, then the CUDA and Triton cases"
T_TESTS=$(box "${MMEARTH_GPU_CHECK_TESTS_TIMEOUT:-120}"); t_tests=$(date +%s)
timeout -s INT -k 20 "$T_TESTS" "${PYTEST[@]}" tests/test_step.py tests -k "cuda or triton" 2>&1 \
  | tee "$OUT_DIR/tests.log" | tail -n 30
tests_rc=${PIPESTATUS[0]}

stamp "e2e: atto at batch 1024 graphed; compiled-graphed at batch 256"
e2e b1024 90 --sizes atto --geometries 56/8 --mask-ratios 0.6 --precisions bf16 --batch 1024 \
  --backends sparse-graphed,dense-graphed,dense-plain-graphed
e2e compiled 150 --sizes atto --geometries 56/8 --mask-ratios 0.6 --precisions bf16 --batch 256 \
  --backends sparse-compiled-graphed,dense-compiled-graphed,dense-plain-compiled-graphed,sparse-compiled,dense-compiled

stamp "kernel benchmarks"
if [ "$DRY" = "1" ] && [ -z "$COPY_GBS" ]; then
  SEL=(-k cpu --benchmark-only); export MMEARTH_BENCH_BATCH=4  # tiny real timings: exercises JSON and report
else
  # the quick slice; the full grid (480 cases, mostly Triton autotuning and torch.compile per shape) took
  # over 7 minutes on an H200 and does not fit a lease
  # issue 17's measure: batch 256, stages 1-2 (56 and 28 px), forward and forward+backward, GB/s vs copy
  SEL=(-k "cuda and bfloat16 and (-fwd- or fwdbwd) and (56px or 28px) and not -ref" --benchmark-only
       --benchmark-min-rounds=5)
  export MMEARTH_BENCH_BATCH=256
fi
bench_rc=0
for op in sparse_dwconv gelu_grn grn sparse_dwconv_ln; do  # most owed first: a phase cut short keeps those
  timeout -s INT -k 20 "$(box 45)" \
  "$PY" -m pytest "benchmarks/bench_$op.py" -q -p no:cacheprovider "${SEL[@]}" \
    --benchmark-json="$OUT_DIR/$NAME-$op.json" > "$OUT_DIR/bench-$op.log" 2>&1 || bench_rc=1
  tail -n 2 "$OUT_DIR/bench-$op.log"
done
"$PY" benchmarks/report.py "$OUT_DIR/$NAME-sparse_dwconv.json" "$OUT_DIR/$NAME-sparse_dwconv_ln.json" "$OUT_DIR/$NAME-grn.json" "$OUT_DIR/$NAME-gelu_grn.json" \
  ${COPY_GBS:+--copy-gbs "$COPY_GBS"} --env "$OUT_DIR/env.json" > "$OUT_DIR/$NAME.md" 2>/dev/null || bench_rc=1
head -n 30 "$OUT_DIR/$NAME.md"

stamp "the CPU tests under this machine's toolchain (what time is left)"
timeout -s INT -k 20 "$(box 300)" "${PYTEST[@]}" tests -k "not (cuda or triton)" -m "not slow" 2>&1 \
  | tee -a "$OUT_DIR/tests.log" | tail -n 8
rest_rc=${PIPESTATUS[0]}
[ "$tests_rc" = 0 ] && [ "$rest_rc" != 124 ] && tests_rc=$rest_rc

stamp "done: tests rc=$tests_rc, benchmarks rc=$bench_rc, e2e rc=$e2e_rc; results in $OUT_DIR/$NAME*"
if [ -n "${OUT:-}" ] && [ "$(cd "$OUT_DIR" && pwd)" = "$(cd "$OUT" && pwd)" ]; then
  # the device tool brings back at most 8 files: one tarball with everything, plus the summaries
  (cd "$OUT_DIR" && tar czf /tmp/gpu_check.tgz --exclude="*-trace.json" . && find . -type f ! -name "$NAME.md" ! -name env.json \
    ! -name "$NAME-e2e-b256.md" ! -name "$NAME-e2e-b256.json" ! -name "$NAME-e2e-b1024.md" ! -name "$NAME-e2e-compiled.md" \
    ! -name tests.log -delete && mv /tmp/gpu_check.tgz .)
fi
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$e2e_rc" = 0 ]
