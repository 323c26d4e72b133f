#!/usr/bin/env bash
# The test command: sets everything up (scripts/setup_env.sh), then runs
#   0. ruff (syntax, pyflakes, line length),
#   1. the test suite (CPU; CUDA/Triton GPU cases skip visibly without a GPU),
#   2. the Triton kernels on CPU under TRITON_INTERPRET=1 (pytest -m triton; its summary counts them),
#   3. the kernel benchmarks once each in smoke mode (small batch, --benchmark-disable).
# Extra arguments go to the first pytest call, e.g. `bash scripts/test.sh -k grn`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup_env.sh
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"

python -m mmearth_kernels.info
echo "== lint (ruff: the rule set in pyproject.toml) =="
python -m ruff check .
echo "== tests =="
python -m pytest tests "$@"
echo "== Triton kernels under the interpreter (TRITON_INTERPRET=1 pytest -m triton) =="
# The interpreter runs every Triton program in Python, on one core per process: two workers halved this step on
# 2 cores (1004 -> 545 s). The step above stays in one process: torch's own threads already use every core there
# (two workers made it 612 -> 981 s).
TRITON_INTERPRET=1 python -m pytest tests -m triton -q -p no:cacheprovider -n auto
echo "== benchmarks, smoke mode (each case once, batch 4) =="
MMEARTH_BENCH_BATCH=4 python -m pytest benchmarks -q --benchmark-disable -p no:cacheprovider
