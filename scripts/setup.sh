#!/usr/bin/env bash
# Create .venv and install overparam with its test tools. Idempotent: skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "overparam needs Python >= 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
stamp=".venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  # The exact pin takes the CPU wheel; a looser requirement would download a CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  # the test extras (transformers for tests/nn/test_real_models.py) keep torch at its pin
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev,models]"
  rm -f .venv/.installed-* && touch "$stamp"
fi
