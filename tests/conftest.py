"""Test-wide environment: 8 simulated CPU devices (set before JAX is imported), quiet TensorFlow, and XLA's
persistent compilation cache for every in-process compile."""
import importlib.util
import os

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.fixture(scope="session", autouse=True)
def _jax_compilation_cache():
  """Programs that compile in 0.5 s or more go to the tests' persistent cache (tests.tiny_data), so a test
  that compiles the same program as an earlier one (test_tiny's train step, an encoder's embed function)
  loads it instead. JAX keys entries by program, flags and version, so a hit is the same executable.
  Subprocesses do not inherit this (they read JAX_COMPILATION_CACHE_DIR from their environment where a test
  sets it)."""
  if importlib.util.find_spec("jax") is None:  # .venv-beam runs the Beam tests without JAX.
    yield
    return
  from tests import tiny_data  # pylint: disable=g-import-not-at-top
  with tiny_data.compilation_cache():
    yield


@pytest.fixture(scope="module", autouse=True)
def _fast_compile(request):
  """Test modules marked fast_compile compile with `jax_disable_most_optimizations` (LLVM at -O0 without its
  expensive passes; XLA's HLO passes, fusion, layouts, sharding and the convolution library choice still
  run, so the tests check the HLO programs users run, with less optimised kernel code).

  For modules that compile many programs and run each once or twice on tiny inputs, where compiling is most
  of the time. Not suite-wide: the evaluation tests run thousands of probe steps, which -O0 slows more than
  it speeds their compiles (a suite-wide run measured 1615 against 1614 s, 2026-12-03). The flag is part of
  the persistent cache's key (checked: the same program got two keys), but not of a jitted function's
  in-memory cache, so a function jitted once at module level (a probe's solver, say) keeps whichever
  executable it compiled first for a shape. Module-scoped, so that a module's own fixtures (a reference run
  that a test compares to the bit) compile like its tests."""
  if request.node.get_closest_marker("fast_compile") is None or importlib.util.find_spec("jax") is None:
    yield
    return
  import jax  # pylint: disable=g-import-not-at-top
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", old)


def pytest_collection_modifyitems(config, items):
  """Under pytest-xdist (AVCL_TEST_WORKERS in scripts/test.sh), tests that start several JAX processes share one
  worker, so two such groups never run at once: each wants every core, and gloo gives up on a peer that
  reaches the first collective 30 s after the others."""
  del config
  for item in items:
    if item.get_closest_marker("multiprocess"):
      item.add_marker(pytest.mark.xdist_group("multiprocess"))
