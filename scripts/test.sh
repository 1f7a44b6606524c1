#!/usr/bin/env bash
# The whole test suite: set-up (if needed), lint, type check, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the shared datasets next to the checkout, when present; otherwise $OVERPARAM_DATA or a download
if [[ -z "${OVERPARAM_DATA:-}" && -d ../shared/data ]]; then
  export OVERPARAM_DATA="$(cd .. && pwd)/shared/data"
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
