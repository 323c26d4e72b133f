#!/usr/bin/env bash
# The main job: demo pretraining of MMEarth's MP-MAE (ConvNeXt V2 atto, 56/8, all 12 tasks) on synthetic
# MMEarth64-format data that is generated on first use (~/.cache/mmearth-kernels/demo-data). Under 3 minutes
# on 2 CPU cores; writes runs/demo/{last.pt, metrics.jsonl, recon/*.png}.
# Sets everything up itself (scripts/setup_env.sh); extra arguments go to the trainer (python -m train --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/setup_env.sh
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
python -m train --preset demo "$@"
