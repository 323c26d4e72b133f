#!/usr/bin/env bash
# The main job (for now the kernel demo; the trainer issue turns it into the demo pretraining).
# Sets everything up itself (scripts/setup_env.sh); extra arguments go to the demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup_env.sh
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
python -m mmearth_kernels.demo "$@"
