#!/usr/bin/env bash
# The main job: set-up (if needed), then every registered experiment and the claims table.
# Usage: bash scripts/reproduce.sh [--quick|--full] [overparam reproduce options]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the shared datasets next to the checkout, when present; otherwise $OVERPARAM_DATA or a download
if [[ -z "${OVERPARAM_DATA:-}" && -d ../shared/data ]]; then
  export OVERPARAM_DATA="$(cd .. && pwd)/shared/data"
fi
exec .venv/bin/overparam reproduce "${@:---quick}"
