#!/usr/bin/env bash
# Sets up .venv if needed, then pretrains on the embedded world (generated on first use) and evaluates.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WORKDIR=${1:-workdirs/default}
.venv/bin/python -m avcl.main --config configs/default.py --workdir "$WORKDIR" --mode train_and_eval "${@:2}"
