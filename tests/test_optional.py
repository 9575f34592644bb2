"""data_pipeline.optional: a plain `pip install -e .` lacks tinysoundfont and the extras; every entry point
that needs one exits first with one line naming the package and the pip command (simulated: the package is
made unimportable in a fresh process by tests/blocked_imports.py)."""
import os
import subprocess
import sys
import time

import pytest

from avcl import main as main_lib
from configs import test_tiny
from data_pipeline import optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = os.path.join(REPO, "tests", "blocked_imports.py")


def run_blocked(blocked, module, *args, tmp_path):
  log = tmp_path / "blocked.log"
  env = dict(os.environ, PYTHONPATH=REPO, AVCL_BLOCKED_LOG=str(log), JAX_PLATFORMS="cpu")
  start = time.monotonic()
  out = subprocess.run([sys.executable, BLOCK, blocked, module, *args], env=env, capture_output=True,
                       text=True, timeout=300, cwd=str(tmp_path))
  return out, time.monotonic() - start, (log.read_text().split() if log.exists() else [])


@pytest.mark.parametrize("module", ["data_pipeline.world", "data_pipeline.embedded"])  # embedded: the old name.
def test_embedded_world_without_tinysoundfont(tmp_path, module):
  out, _, tried = run_blocked("tinysoundfont", module, "--output", str(tmp_path / "w"),
                              "--clips", "8", "--workers", "1", tmp_path=tmp_path)
  assert out.returncode == 1, out.stderr[-2000:]
  assert out.stderr.splitlines() == [
      "error: python -m data_pipeline.world needs the package tinysoundfont, which is not installed: "
      "pip install tinysoundfont --no-deps"]
  assert tried == ["tinysoundfont"]
  assert not (tmp_path / "w").exists()  # Nothing started: no folder, no marker, no worker.


def test_main_checks_before_loading_tensorflow_or_jax(tmp_path):
  root = tmp_path / "world"
  out, _, tried = run_blocked(
      "tinysoundfont,tensorflow,jax", "avcl.main", "--config", os.path.join(REPO, "configs", "test_tiny.py"),
      "--workdir", str(tmp_path / "run"), f"--config.data.root={root}", tmp_path=tmp_path)
  assert out.returncode == 1, out.stderr[-2000:]
  assert out.stderr.splitlines() == [
      f"error: python -m avcl.main (generating the embedded world at config.data.root={str(root)!r}) needs the "
      "package tinysoundfont, which is not installed: pip install tinysoundfont --no-deps"]
  # TensorFlow and JAX were never imported (they would have been refused and logged): the hint comes first.
  assert tried == ["tinysoundfont"]
  assert not root.exists() and not (tmp_path / "run").exists()


def test_beam_ingest_without_apache_beam(tmp_path):
  out, _, _ = run_blocked("apache_beam", "data_pipeline.beam_ingest", "--input", str(tmp_path),
                          "--output", str(tmp_path / "out"), tmp_path=tmp_path)
  assert out.returncode == 1, out.stderr[-2000:]
  assert out.stderr.splitlines() == [
      "error: python -m data_pipeline.beam_ingest needs the package apache-beam, which is not installed: "
      "bash scripts/setup_beam.sh, then run it with .venv-beam/bin/python"]
  assert not (tmp_path / "out").exists()


def test_require_and_ensure_world(tmp_path, monkeypatch):
  assert optional.available("json")
  monkeypatch.setitem(sys.modules, "pyarrow", None)  # None in sys.modules: `import pyarrow` raises.
  with pytest.raises(optional.MissingDependency, match=r"^writing Parquet needs the package pyarrow, which is "
                     r"not installed: pip install pyarrow$"):
    optional.require("pyarrow", "writing Parquet")
  with pytest.raises(KeyError, match="not a known optional package"):
    optional.require("numpy", "x")
  # run()'s path: ensure_world checks before it starts the generator process.
  monkeypatch.setitem(sys.modules, "tinysoundfont", None)
  ran = []
  monkeypatch.setattr(main_lib.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
  config = test_tiny.get_config()
  config.data.root = str(tmp_path / "world")
  assert main_lib.will_generate_world(config)
  with pytest.raises(optional.MissingDependency, match="tinysoundfont --no-deps"):
    main_lib.ensure_world(config)
  assert ran == []
  (tmp_path / "world").mkdir()
  (tmp_path / "world" / "world.json").write_text("{}")
  assert not main_lib.will_generate_world(config)
