"""Smoke test of benchmarks/input_pipeline.py (slow: it ingests videos and imports TensorFlow afresh)."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_benchmark_prints_rates_and_ratio():
  r = subprocess.run([sys.executable, "-m", "benchmarks.input_pipeline", "--ingest-videos", "2", "--workers",
                      "1", "--batches", "2", "--step-clips-per-sec", "1e-3"], cwd=ROOT, capture_output=True,
                     text=True, check=True, timeout=300)
  out = r.stdout
  assert f"{os.cpu_count()} CPU cores" in out
  assert re.search(r"ingest: [\d.]+ clips/s", out) and re.search(r"input pipeline: [\d.]+ clips/s", out)
  assert re.search(r"input / train step: [\d.]+x \(OK", out)
