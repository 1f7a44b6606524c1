#!/usr/bin/env bash
# The whole test suite: set-up (if needed), lint, type check, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OVERPARAM_DATA="${OVERPARAM_DATA:-$(cd .. && pwd)/shared/data}"
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
