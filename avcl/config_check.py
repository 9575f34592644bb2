"""The checker every config section's owner writes its checks with: `field=value must ...` messages, all of
them collected before anything is raised.

Each module owns its section's choices, ranges and checks (`check_config(c)` in avcl.frontend, avcl.augment,
avcl.models, avcl.losses, avcl.optim, avcl.evaluate.config); `avcl.config_validation` gathers them into one
report for a training config, and each owner runs its own check again on the section it is handed at run
time (`validate(...)` below) so that a direct caller gets the same message. JAX-free and importing nothing
of avcl: config files load without JAX, and every owner can import it without an import circle.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

MISSING = object()


class ConfigError(ValueError):
  """One or more config fields are invalid; the message lists each with its allowed values."""


def is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _get(node: Any, path: str) -> Any:
  """node's field at the dotted `path` (ConfigDict, dict or a namespace), or MISSING."""
  for part in path.split("."):
    if hasattr(node, "keys"):
      if part not in node:
        return MISSING
      node = node[part]
    elif hasattr(node, part):
      node = getattr(node, part)
    else:
      return MISSING
  return node


def _interval_text(lo, hi, lo_open=False, hi_open=False) -> str:
  """ "in [lo, hi)", "> lo", ... for the bounds that are not None."""
  if lo is not None and hi is not None:
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  if lo is not None:
    return f"{'>' if lo_open else '>='} {lo}"
  if hi is not None:
    return f"{'<' if hi_open else '<='} {hi}"
  return ""


class Checker:
  """Collects `field=value must ...` messages about one config section (or the whole config).

  cfg: the section checked; field paths are relative to it and shown after `prefix` ("model.",
  "config.model."). strict: a field the section lacks is an error (a training config holds every field of
  configs/default.py); otherwise (a stored config of an older run, a section handed to a builder) it is
  skipped, and the code that reads it says what is missing. root: the Checker of the whole config, for the
  checks that read another section (None when the section is checked alone: those checks are skipped).
  One message per field: a field that failed one check is not blamed again by a later, looser one (an
  encoder's own limit on a field shared by its slot's encoders, then the slot's range).
  """

  def __init__(self, cfg: Any, prefix: str = "", *, strict: bool = True, root: Checker | None = None,
               errors: list[str] | None = None, failed: set[str] | None = None):
    self.cfg = cfg
    self.prefix = prefix
    self.strict = strict
    self.root = root
    self.errors: list[str] = [] if errors is None else errors
    self._failed: set[str] = set() if failed is None else failed

  def section(self, name: str) -> Checker:
    """The checker of `name` (a section of this one), adding to the same messages."""
    return Checker(_get(self.cfg, name), f"{self.prefix}{name}.", strict=self.strict, root=self.root or self,
                   errors=self.errors, failed=self._failed)

  def label(self, path: str) -> str:
    """How the field is named in messages."""
    return self.prefix + path

  def peek(self, path: str) -> Any:
    """The field's value, or None when absent; never a message (for limits that depend on another field)."""
    v = _get(self.cfg, path)
    return None if v is MISSING else v

  def value(self, path: str, default: Any = MISSING) -> Any:
    """The field's value; `default` for an optional field (configs stored before it existed); MISSING,
    with an error when strict, for an absent required one."""
    v = _get(self.cfg, path)
    if v is MISSING:
      if default is not MISSING:
        return default
      if self.strict and self.label(path) not in self._failed:
        self._failed.add(self.label(path))
        self.errors.append(f"{self.label(path)} is missing (every field of configs/default.py is required)")
    return v

  def error(self, text: str) -> None:
    self.errors.append(text)

  def fail(self, path: str, value: Any, requirement: str) -> None:
    if self.label(path) not in self._failed:
      self._failed.add(self.label(path))
      self.errors.append(f"{self.label(path)}={value!r} must {requirement}")

  def check(self, path: str, ok: Callable[[Any], bool], requirement: str, default: Any = MISSING) -> Any:
    """The field's value after checking `ok(value)` (None when absent)."""
    v = self.value(path, default)
    if v is MISSING:
      return None
    try:
      good = ok(v)
    except (TypeError, ValueError):
      good = False
    if not good:
      self.fail(path, v, requirement)
    return v

  # Typed helpers --------------------------------------------------------------------------------------
  def boolean(self, path: str, **kw) -> Any:
    return self.check(path, lambda v: isinstance(v, bool), "be True or False", **kw)

  def integer(self, path: str, lo: int | None = None, hi: int | None = None, *, why: str = "", **kw) -> Any:
    return self.check(path, lambda v: is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
                      "be an integer " + _interval_text(lo, hi) + why, **kw)

  def real(self, path: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False, why: str = "", **kw) -> Any:
    def ok(v):
      if not (is_real(v) and math.isfinite(v)):
        return False
      if lo is not None and (v <= lo if lo_open else v < lo):
        return False
      if hi is not None and (v >= hi if hi_open else v > hi):
        return False
      return True
    return self.check(path, ok, "be a finite number " + _interval_text(lo, hi, lo_open, hi_open) + why, **kw)

  def choice(self, path: str, allowed: Iterable[Any], **kw) -> Any:
    allowed = tuple(allowed)
    return self.check(path, lambda v: v in allowed, f"be one of {', '.join(repr(a) for a in allowed)}", **kw)

  def raise_if_errors(self, what: str = "invalid config") -> None:
    if self.errors:
      raise ConfigError(f"{what}:\n  " + "\n  ".join(self.errors))


def validate(check_config: Callable[[Checker], Any], section: Any, prefix: str) -> None:
  """Runs an owner's `check_config` on `section` alone (absent fields skipped, other sections unseen) and
  raises ConfigError listing every problem, each named `prefix + field` (e.g. "config.augment.")."""
  c = Checker(section, prefix, strict=False)
  check_config(c)
  c.raise_if_errors()
