"""benchmarks/input_pipeline.py: the ratio's verdict, and a smoke run (slow: it ingests videos and imports
TensorFlow afresh) whose printed ratio must be the measured input rate over the given step rate."""
import os
import re
import subprocess
import sys

import pytest

from benchmarks import input_pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ratio_verdict_flips_at_the_target():
  assert input_pipeline.ratio_line(100.0, 40.0) == "input / train step: 2.50x (OK the 2x target; step 40.0 clips/s)"
  assert input_pipeline.ratio_line(100.0, 50.0).startswith("input / train step: 2.00x (OK")
  # A step just faster than half the input rate: below the target.
  assert input_pipeline.ratio_line(100.0, 50.5).startswith("input / train step: 1.98x (BELOW")


@pytest.mark.slow
def test_benchmark_prints_rates_and_ratio():
  step_rate = 7.0  # Any value: the check is that the printed ratio is computed from the measured rate.
  r = subprocess.run([sys.executable, "-m", "benchmarks.input_pipeline", "--ingest-videos", "2", "--workers",
                      "1", "--batches", "2", "--step-clips-per-sec", str(step_rate)], cwd=ROOT,
                     capture_output=True, text=True, check=True, timeout=300)
  out = r.stdout
  assert f"{os.cpu_count()} CPU cores" in out
  assert re.search(r"ingest: [\d.]+ clips/s", out)
  rate = float(re.search(r"input pipeline: ([\d.]+) clips/s", out).group(1))
  m = re.search(r"input / train step: ([\d.]+)x \((OK|BELOW) the 2x target; step 7.0 clips/s\)", out)
  assert m, out
  ratio, verdict = float(m.group(1)), m.group(2)
  # The printed rate is rounded to 0.1 clips/s, the ratio to 0.01.
  assert abs(ratio - rate / step_rate) <= 0.05 / step_rate + 0.005 + 1e-9, (ratio, rate)
  if abs(ratio - 2) > 0.01:  # Within the rounding of 2.00 either verdict is right.
    assert verdict == ("OK" if ratio >= 2 else "BELOW")
