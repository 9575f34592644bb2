"""XLA_FLAGS for every JAX process of the test suite: tests/conftest.py sets them for the pytest process, and
tests that start JAX processes of their own pass them on.

The tests compile hundreds of programs and run each a few times on tiny inputs, so compile time is most of
the suite's time. LLVM at -O0 without its expensive passes compiles faster; XLA's HLO passes (fusion,
layout, sharding, the convolution library choice) still run, so the tests check the same HLO programs that
users run, with LLVM's kernel code less optimised. Values differ only by float rounding (tests/test_train.py
jitted with the same options before). On the 2-core AMD EPYC, tests/test_models.py, test_augment.py and
test_losses.py took 357 s with XLA's defaults and 264 s with these, one cold-cache run each (2026-12-03).
"""

FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int | None = None) -> str:
  """FAST_COMPILE, with `devices` simulated CPU devices where given (launchers add their own count)."""
  if devices is None:
    return FAST_COMPILE
  return f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}"
