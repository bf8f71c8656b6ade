#!/usr/bin/env bash
# The main job: set up (scripts/setup.sh), then the DeconvNet demo on built-in synthetic data
# (trains a width-scaled DeconvNet through both stages of the paper's recipe, evaluates held-out
# images; a few minutes on 2 CPU cores). Outputs go to demo-out/ (DEMO_OUT); extra arguments go
# to `deconvnet demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY="${VENV:-.venv}/bin/python"
exec "$PY" -m deconvkernels demo --out "${DEMO_OUT:-demo-out}" "$@"
