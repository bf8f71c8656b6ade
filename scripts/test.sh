#!/usr/bin/env bash
# Set up (scripts/setup.sh), then lint and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${DECONVKERNELS_SKIP_SETUP:-}" ] || bash scripts/setup.sh
PY="${VENV:-.venv}/bin/python"
echo "== ruff"
"$PY" -m ruff check deconvkernels tests benchmarks setup.py
echo "== pytest"
rc=0
"$PY" -m pytest tests -q -rs "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$rc"
