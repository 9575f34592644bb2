"""Helpers for `get_sweep()` in config files, and the names of the runs a sweep makes.

A sweep is a list of override dicts, one per run (`{"data.frame_size": 16, "seed": 0}`), built from axes:

    from configs.sweeps.dsl import axis, product, zip
    def get_sweep():
      return product(axis("data.frame_size", [16, 32, 64]),
                     zip(axis("train.global_batch_size", [32, 64]), axis("optim.learning_rate", [1e-3, 2e-3])),
                     axis("seed", [0, 1, 2]))

`product` crosses axes (the last varies fastest, as nested for-loops); `zip` pairs them run by run;
lists of dicts concatenate with `+` for variants that are not a grid. Only the standard library is used,
so config files import this without JAX.
"""
from __future__ import annotations

import builtins
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

Overrides = dict[str, Any]


def axis(key: str, values: Iterable[Any]) -> list[Overrides]:
  """One swept field: `axis("seed", [0, 1])` -> `[{"seed": 0}, {"seed": 1}]`."""
  values = list(values)
  if not values:
    raise ValueError(f"axis {key!r} has no values")
  return [{key: v} for v in values]


def _merge(parts: Sequence[Mapping[str, Any]], how: str) -> Overrides:
  out: Overrides = {}
  for part in parts:
    for k, v in part.items():
      if k in out:
        raise ValueError(f"{how}: key {k!r} is set by two axes ({out[k]!r} and {v!r})")
      out[k] = v
  return out


def product(*axes: Sequence[Mapping[str, Any]]) -> list[Overrides]:
  """Every combination of the axes' entries, merged; the last axis varies fastest."""
  if not axes:
    return [{}]
  return [_merge(combo, "product") for combo in itertools.product(*axes)]


def zip(*axes: Sequence[Mapping[str, Any]]) -> list[Overrides]:  # pylint: disable=redefined-builtin
  """Entries taken together position by position; every axis must have the same length."""
  lengths = [len(a) for a in axes]
  if len(set(lengths)) > 1:
    raise ValueError(f"zip: axes have different lengths {lengths}")
  return [_merge(parts, "zip") for parts in builtins.zip(*axes)]


def _value_text(value: Any) -> str:
  if isinstance(value, bool):
    text = "true" if value else "false"
  elif isinstance(value, float):
    text = f"{value:g}"
    if math.isfinite(value) and float(text) != value:
      text = repr(value)  # Keep distinct values distinct (1e-3 vs 1.0001e-3).
  elif isinstance(value, (tuple, list)):
    text = "x".join(_value_text(v) for v in value) or "empty"
  elif value == "":
    text = "none"
  else:
    text = str(value)
  return re.sub(r"[^A-Za-z0-9.+-]", "_", text)


def run_names(sweep: Sequence[Mapping[str, Any]]) -> list[str]:
  """A distinct, filesystem-safe name per run, e.g. `data.frame_size=16,train.global_batch_size=64,seed=0`.

  Keys of three or more components are shortened to their last two (`augment.mix.enabled` ->
  `mix.enabled`) unless two swept keys would then look alike, which keep their full dotted path.
  Raises on two runs with identical overrides.
  """
  keys = list(dict.fromkeys(k for run in sweep for k in run))
  tails = [".".join(k.split(".")[-2:]) for k in keys]
  short = {k: (t if tails.count(t) == 1 else k) for k, t in builtins.zip(keys, tails)}
  names = []
  seen: dict[str, int] = {}
  for i, run in enumerate(sweep):
    name = ",".join(f"{short[k]}={_value_text(v)}" for k, v in run.items()) or "base"
    if name in seen:
      j = seen[name]
      if dict(sweep[j]) == dict(run):
        raise ValueError(f"sweep runs {j} and {i} have the same overrides {dict(run)}")
      name = f"{name},run={i}"  # Different values that print alike (e.g. "a b" and "a_b").
    seen[name] = i
    names.append(name)
  return names
