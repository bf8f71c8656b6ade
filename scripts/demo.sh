#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), then run it. Until the DeconvNet demo lands,
# that is the op benchmark report (ratios against PyTorch, bandwidth against a copy; extra
# arguments go to it) followed by a short report of the fused unpool + deconvolution.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${VENV:-.venv}/bin/python"
"$PY" -m deconvkernels.bench "$@"
exec "$PY" -m deconvkernels.bench_fused --quick --no-progress
