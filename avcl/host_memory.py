"""How the C allocator of a CPU process hands out and takes back large blocks: set once by avcl's entry points.

Why: XLA:CPU allocates every output and temporary buffer of a jitted call with the C allocator, call after
call. glibc's malloc serves a block above its mmap threshold (128 KiB at start, rising with freed blocks to at
most 32 MiB) with a fresh `mmap` and unmaps it again on `free`, and gives back freed memory at the top of its
heap above 128 KiB (`M_TRIM_THRESHOLD`). So each call of a jitted function with large buffers maps new pages,
and the kernel zero-fills each 4 KiB page at its first touch: for the log-mel frontend of a training batch
(64 clips x 2 s; 26 MB frame and spectrum buffers) that page work took longer than the FFT itself
(benchmarks/README.md, "Frontend").

Policies (`$AVCL_HOST_MALLOC`, read by `apply()`):
- "auto" (the default): "keep" when JAX computes on the CPU; otherwise the allocator is left as it is, since
  an accelerator's buffers do not come from the C allocator.
- "keep": `mallopt(M_MMAP_MAX, 0)` serves every block from the heap, and
  `mallopt(M_TRIM_THRESHOLD, 2 GiB - 1)` keeps up to 2 GiB of freed memory at the heap's top instead of
  returning it, so the next call reuses pages that are already mapped. The cost is resident memory: the
  process keeps what it freed (up to that bound) instead of handing it back, so its RSS stays near its peak.
- "system": the C library's own behaviour, untouched (glibc: the dynamic mmap threshold above). Setting glibc's
  documented default values with mallopt would not restore it: an explicit threshold turns the dynamic one
  off, and every block above 128 KiB is then mapped anew (librosa ran 2.5x slower that way here).
A policy is set once per process, before the large allocations: blocks "keep" left in the heap stay there.
Only glibc is touched. On other C libraries (macOS, musl) `apply` changes nothing and says so.

It changes no computed value, only where buffers live: tests/test_host_memory.py checks that a large block
comes from the heap under "keep" and from a mapping under "system".
Entry points that call `apply`: `avcl.main`, `python -m avcl.evaluate`, and the CPU benchmarks. A library
import (the HEAR module, `avcl.embed`) never does: the allocator belongs to the host program.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

ENV = "AVCL_HOST_MALLOC"
POLICIES = ("auto", "keep", "system")
DEFAULT = "auto"

# glibc's mallopt parameters (malloc.h). mallopt takes an int: 2**31 - 1 is the largest trim threshold it can express.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_KEEP = {_M_MMAP_MAX: 0, _M_TRIM_THRESHOLD: 2**31 - 1}


class _MallInfo2(ctypes.Structure):
  """glibc's `struct mallinfo2` (glibc >= 2.33): byte counts as size_t."""
  _fields_ = [(name, ctypes.c_size_t) for name in
              ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
               "keepcost")]


@functools.lru_cache(maxsize=1)
def _glibc():
  """The process's glibc (ctypes.CDLL), or None when the C library is not glibc."""
  libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
  if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
    return None
  libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  libc.mallopt.restype = ctypes.c_int
  return libc


def policy_from_env() -> str:
  """$AVCL_HOST_MALLOC (default "auto"), validated."""
  value = os.environ.get(ENV, "").strip() or DEFAULT
  if value not in POLICIES:
    raise ValueError(f"${ENV}={value!r} is not a host allocator policy: use one of {', '.join(POLICIES)} "
                     "(avcl/host_memory.py)")
  return value


def apply(policy: str | None = None, *, platform: str = "cpu") -> str:
  """Sets the allocator policy for this process (None: `policy_from_env()`).

  platform: JAX's backend (`jax.default_backend()`), which "auto" decides by.
  Returns the policy applied, or "unchanged (...)" with the reason where nothing was set.
  """
  policy = policy_from_env() if policy is None else policy
  if policy not in POLICIES:
    raise ValueError(f"host allocator policy must be one of {POLICIES}, got {policy!r}")
  if policy == "auto":
    if platform != "cpu":
      return f"unchanged ({platform} backend)"
    policy = "keep"
  if policy == "system":
    return policy
  libc = _glibc()
  if libc is None:
    return "unchanged (not glibc)"
  for param, value in _KEEP.items():
    if libc.mallopt(param, value) != 1:
      raise OSError(f"glibc mallopt({param}, {value}) refused the {policy!r} host allocator policy")
  return policy


def mapped_bytes() -> int | None:
  """Bytes the C allocator holds in separately mapped blocks (glibc's mallinfo2().hblkhd; None elsewhere)."""
  libc = _glibc()
  if libc is None or not hasattr(libc, "mallinfo2"):
    return None
  libc.mallinfo2.restype = _MallInfo2
  return int(libc.mallinfo2().hblkhd)
