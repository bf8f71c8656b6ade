#!/usr/bin/env bash
# Creates the virtualenv (default .venv), installs torch 2.14.1 and the tools, and builds
# deconvkernels in place with its C++/CUDA kernels. Safe to re-run: an up-to-date build
# is only relinked. Environment: VENV, PYTHON, MAX_JOBS, DECONVKERNELS_FORCE_CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
export MAX_JOBS="${MAX_JOBS:-2}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
echo "== installing torch 2.14.1 and tools"
"$PY" -m pip install -q --disable-pip-version-check \
  "torch==2.14.1" numpy ninja pybind11 "setuptools>=77" wheel \
  pytest pytest-benchmark hypothesis ruff tqdm matplotlib opencv-contrib-python
# With nvcc present, the CUDA kernels must build: fail loudly rather than fall back.
if [ -z "${DECONVKERNELS_FORCE_CUDA:-}" ] && command -v nvcc >/dev/null 2>&1; then
  export DECONVKERNELS_FORCE_CUDA=1
fi
echo "== building deconvkernels (MAX_JOBS=$MAX_JOBS, DECONVKERNELS_FORCE_CUDA=${DECONVKERNELS_FORCE_CUDA:-auto})"
"$PY" -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
"$PY" -c "import deconvkernels as dk, json; print(json.dumps(dk.build_info(), indent=1))"
