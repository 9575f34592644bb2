"""Pieces every launcher shares: config overrides, the `avcl.main` command line, free ports, dry runs.

Launchers never import jax or avcl's modules (only avcl.exit_codes, which imports nothing): they only
build command lines and start processes, so they run on a laptop with nothing but Python (e.g. to drive
gcloud) and stay cheap to import in tests.
"""
from __future__ import annotations

import ast
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from avcl.exit_codes import PREEMPTED  # noqa: F401  (re-exported: the launchers' name for it)

# `--override` keys are dotted config paths: `train.global_batch_size`, `seed`.
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_override(text: str) -> tuple[str, str]:
  """`"train.global_batch_size=256"` -> `("train.global_batch_size", "256")` (value kept as text).

  The value is handed to `avcl.main` verbatim as `--config.KEY=VALUE`, where ml_collections parses it
  with the type of the field in the config, so `k=` (empty) is a valid override of a string field.
  """
  if "=" not in text:
    raise ValueError(f"--override {text!r}: expected KEY=VALUE (e.g. train.num_steps=100)")
  key, value = text.split("=", 1)
  key = key.strip()
  if key.startswith("config."):
    key = key[len("config."):]
  if not _KEY_RE.match(key):
    raise ValueError(f"--override {text!r}: key {key!r} is not a dotted config path like train.num_steps")
  return key, value


def parse_overrides(texts: Iterable[str] | None) -> dict[str, str]:
  """Repeated `--override k=v` flags -> ordered dict; a later value for the same key wins."""
  out: dict[str, str] = {}
  for text in texts or ():
    key, value = parse_override(text)
    out[key] = value
  return out


def format_value(value: Any) -> str:
  """A Python override value as ml_collections' `--config.k=v` parser reads it.

  bool -> `True`/`False`; tuples/lists -> a Python literal `(1, 2)` (config_flags literal-evals
  sequences); floats keep full precision with `repr`; strings go through unchanged.
  """
  if isinstance(value, bool):
    return "True" if value else "False"
  if isinstance(value, (int, float)):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return repr(tuple(value))
  if isinstance(value, str):
    return value
  raise TypeError(f"override value {value!r} of type {type(value).__name__}: use bool, int, float, str or "
                  "a tuple of them")


def override_flags(overrides: Mapping[str, Any]) -> list[str]:
  """`{"train.num_steps": 10}` -> `["--config.train.num_steps=10"]`, in insertion order."""
  flags = []
  for key, value in overrides.items():
    if not _KEY_RE.match(key):
      raise ValueError(f"override key {key!r} is not a dotted config path like train.num_steps")
    flags.append(f"--config.{key}={format_value(value)}")
  return flags


def main_command(*, python: str, config: str, workdir: str, mode: str, overrides: Mapping[str, Any],
                 distributed: Sequence[str] = (), module: str = "avcl.main") -> list[str]:
  """The argv of one `avcl.main` process. `distributed` holds the process-group flags, if any.

  `module`: another entry point taking avcl.main's flags (tests use a driver that feeds fixed batches).
  """
  if mode not in ("train", "eval", "train_and_eval"):
    raise ValueError(f"--mode {mode!r}: expected train, eval or train_and_eval")
  return [python, "-m", module, f"--config={config}", f"--workdir={workdir}", f"--mode={mode}",
          *distributed, *override_flags(overrides)]


def distributed_flags(*, coordinator: str, num_processes: int, process_id: int) -> list[str]:
  """Flags that make `avcl.main` join an explicit process group (no auto-detection)."""
  return ["--distributed=on", f"--coordinator_address={coordinator}", f"--num_processes={num_processes}",
          f"--process_id={process_id}"]


def free_port() -> int:
  """A TCP port on 127.0.0.1 that is free right now (the OS picks it; tiny race until the coordinator binds)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def shell_join(argv: Sequence[str]) -> str:
  return shlex.join(list(argv))


def literal_or_text(text: str) -> Any:
  """`"256"` -> 256, `"True"` -> True, `"(1, 2)"` -> (1, 2), anything else stays a string."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


class Runner:
  """Runs (or, in a dry run, prints) shell commands, one per line, so a dry run is a runnable script."""

  def __init__(self, dry_run: bool, out=None):
    self.dry_run = dry_run
    self.out = out or sys.stdout
    self.commands: list[list[str]] = []

  def note(self, text: str) -> None:
    print(f"# {text}", file=self.out, flush=True)

  def run(self, argv: Sequence[str], *, check: bool = True, capture: bool = False) -> str:
    argv = list(argv)
    self.commands.append(argv)
    print(shell_join(argv), file=self.out, flush=True)
    if self.dry_run:
      return ""
    result = subprocess.run(argv, check=False, text=True,
                            stdout=subprocess.PIPE if capture else None)
    if check and result.returncode != 0:
      raise SystemExit(f"command failed with exit status {result.returncode}: {shell_join(argv)}")
    return result.stdout if capture else ""
