#!/usr/bin/env bash
# Creates .venv-beam for the Apache Beam ingest tests (tests/test_beam_ingest.py). A separate environment:
# apache-beam pins an older protobuf than the one the main .venv resolves with JAX and TensorFlow. It holds
# only what data_pipeline's ingest needs (no JAX); the tests import the repository from its root.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
if [ ! -x .venv-beam/bin/python ]; then
  "$PY" -m venv .venv-beam
fi
stamp=.venv-beam/.avcl-installed
if [ ! -f "$stamp" ] || [ "$0" -nt "$stamp" ]; then
  .venv-beam/bin/python -m pip install -q --upgrade pip
  # The same bounds as setup.py's install_requires and its 'beam' extra, for the packages ingest imports.
  .venv-beam/bin/python -m pip install -q "apache-beam>=2.60" "google-crc32c>=1.5" "tensorflow-cpu>=2.20,<2.22" \
    "av>=14,<19" "soxr>=0.3" "numpy>=1.26" "pillow>=10.1" "tqdm>=4.60" "pytest>=8"
  touch "$stamp"
fi
