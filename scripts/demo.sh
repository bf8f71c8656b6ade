#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), then run it. Until the DeconvNet demo lands,
# that is the op benchmark report (ratios against PyTorch, bandwidth against a copy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/python" -m deconvkernels.bench "$@"
