#!/usr/bin/env bash
# The one-command GPU check, for a lent H100/H200 (torch + triton preinstalled, no network, nvcc present):
#   1. build the extension in place for the visible GPU,
#   2. print the device and versions, measure copy bandwidth once,
#   3. run every test (the CUDA and Triton cases run there; CPU ones too),
#   4. run the kernel benchmarks on the GPU (fwd, bwd, fwd+bwd; each impl and the dense baselines,
#      incl. torch.compile'd GRN), write JSON and a table with GB/s and % of the copy bandwidth,
#   5. run the quick end-to-end training-step grid (python -m benchmarks.e2e: atto and tiny, 56/8,
#      mask 0.6, bf16 and fp32; dense, sparse, then their compiled variants) under a time limit
#      (MMEARTH_GPU_CHECK_E2E_TIMEOUT, default 300 s; the JSON keeps every case finished before it).
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]     (default: $OUT if set, else benchmarks/results)
# Budget: about 8 minutes on an H100. MMEARTH_GPU_CHECK_DRY_RUN=1 runs the plumbing on a CPU box
# (tests as usual, benchmarks in smoke mode) to check the script itself before a GPU session.
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

stamp "build"
if ! MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py build_ext --inplace > "$OUT_DIR/build.log" 2>&1; then
  tail -n 40 "$OUT_DIR/build.log"; echo "gpu_check: build failed (log: $OUT_DIR/build.log)" >&2; exit 1
fi
grep "\[mmearth_kernels setup\]" "$OUT_DIR/build.log"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

stamp "device and versions"
"$PY" -m mmearth_kernels.info
"$PY" benchmarks/gpu_env.py --out "$OUT_DIR/env.json" || exit 1
COPY_GBS=$("$PY" -c "import json; print(json.load(open('$OUT_DIR/env.json')).get('copy_gbs') or '')")
GPU=$("$PY" -c "import json; g = json.load(open('$OUT_DIR/env.json'))['gpu'] or 'cpu-dry-run'; \
print(''.join(c if c.isalnum() else '-' for c in g.lower()).strip('-'))")
NAME="$GPU-$(date +%F)"

stamp "tests (CUDA and Triton cases run on the GPU)"
"$PY" -m pytest tests -q -p no:cacheprovider -rs 2>&1 | tee "$OUT_DIR/tests.log" | tail -n 25
tests_rc=${PIPESTATUS[0]}

stamp "kernel benchmarks"
if [ "$DRY" = "1" ] && [ -z "$COPY_GBS" ]; then
  SEL=(-k cpu --benchmark-only); export MMEARTH_BENCH_BATCH=4  # tiny real timings: exercises JSON and report
else
  SEL=(-k cuda --benchmark-only --benchmark-min-rounds=5)
fi
bench_rc=0
for op in sparse_dwconv grn; do
  "$PY" -m pytest "benchmarks/bench_$op.py" -q -p no:cacheprovider "${SEL[@]}" \
    --benchmark-json="$OUT_DIR/$NAME-$op.json" > "$OUT_DIR/bench-$op.log" 2>&1 || bench_rc=1
  tail -n 2 "$OUT_DIR/bench-$op.log"
done

stamp "report"
"$PY" benchmarks/report.py "$OUT_DIR/$NAME-sparse_dwconv.json" "$OUT_DIR/$NAME-grn.json" \
  ${COPY_GBS:+--copy-gbs "$COPY_GBS"} --env "$OUT_DIR/env.json" > "$OUT_DIR/$NAME.md" || bench_rc=1
cat "$OUT_DIR/$NAME.md"
stamp "end-to-end training-step grid"
E2E=(--out "$OUT_DIR" --name "$NAME-e2e")
if [ "$DRY" = "1" ] && [ -z "$COPY_GBS" ]; then E2E+=(--smoke --backends dense,sparse --no-isolate); fi
e2e_rc=0
timeout "${MMEARTH_GPU_CHECK_E2E_TIMEOUT:-300}" "$PY" -m benchmarks.e2e "${E2E[@]}" > "$OUT_DIR/e2e.log" 2>&1 || e2e_rc=$?
if [ "$e2e_rc" = 124 ] && [ -f "$OUT_DIR/$NAME-e2e.json" ]; then
  echo "gpu_check: the e2e grid hit its time limit; reporting the cases it finished"
  "$PY" -m benchmarks.e2e --report "$OUT_DIR/$NAME-e2e.json" > /dev/null
fi
cat "$OUT_DIR/$NAME-e2e.md" 2>/dev/null || tail -n 20 "$OUT_DIR/e2e.log"

stamp "done: tests rc=$tests_rc, benchmarks rc=$bench_rc, e2e rc=$e2e_rc; results in $OUT_DIR/$NAME*"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ] && [ "$e2e_rc" = 0 ]
