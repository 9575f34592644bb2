#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs avcl with its dev tools. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.avcl-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  # tinysoundfont declares pyaudio (playback only), which needs system headers to build; we only render.
  .venv/bin/python -m pip install -q --no-deps 'tinysoundfont>=0.3,<0.4'
  touch "$stamp"
fi
