"""avcl.host_memory: where large blocks come from under each policy, and how bad input is refused."""
import os
import subprocess
import sys
import textwrap

import pytest

from avcl import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates a 64 MiB numpy array (malloc) under a policy and prints how much the allocator's separately
# mapped bytes grew. Run in a child so that the test process keeps its own allocator settings.
_CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    from avcl import host_memory
    applied = host_memory.apply(sys.argv[1], platform="cpu")
    before = host_memory.mapped_bytes()
    block = np.empty(64 * 2**20, np.uint8)
    block[::4096] = 1  # Touch every page.
    print(applied, host_memory.mapped_bytes() - before)
""")


def _mapped_growth(policy):
  out = subprocess.run([sys.executable, "-c", _CHILD, policy], cwd=ROOT, capture_output=True, text=True,
                       check=True, env={**os.environ, "PYTHONPATH": ROOT}).stdout.split()
  return out[0], int(out[1])


@pytest.mark.skipif(host_memory.mapped_bytes() is None, reason="needs glibc >= 2.33 (mallinfo2)")
def test_keep_serves_large_blocks_from_the_heap_and_system_maps_them():
  assert _mapped_growth("keep") == ("keep", 0)
  assert _mapped_growth("auto") == ("keep", 0)
  policy, growth = _mapped_growth("system")
  assert policy == "system" and growth >= 64 * 2**20


def test_policy_from_env(monkeypatch):
  monkeypatch.delenv(host_memory.ENV, raising=False)
  assert host_memory.policy_from_env() == "auto"
  monkeypatch.setenv(host_memory.ENV, "system")
  assert host_memory.policy_from_env() == "system"
  monkeypatch.setenv(host_memory.ENV, "jemalloc")
  with pytest.raises(ValueError, match=r"\$AVCL_HOST_MALLOC='jemalloc'.*auto, keep, system"):
    host_memory.policy_from_env()


def test_auto_leaves_accelerator_processes_alone():
  assert host_memory.apply("auto", platform="gpu") == "unchanged (gpu backend)"
  assert host_memory.apply("auto", platform="tpu") == "unchanged (tpu backend)"


def test_unknown_policy_is_refused():
  with pytest.raises(ValueError, match="policy must be one of"):
    host_memory.apply("never")


@pytest.mark.parametrize("module", ["avcl.main", "avcl.evaluate"])
def test_entry_points_refuse_a_bad_policy_by_name(module, tmp_path):
  args = ["--config", "configs/default.py"] if module == "avcl.main" else []
  proc = subprocess.run([sys.executable, "-m", module, *args, "--workdir", str(tmp_path)], cwd=ROOT,
                        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT,
                                                             host_memory.ENV: "tcmalloc"})
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "error: $AVCL_HOST_MALLOC='tcmalloc' is not a host allocator policy" in proc.stderr
  assert "Traceback" not in proc.stderr
