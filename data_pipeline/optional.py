"""Packages that `pip install -e .` does not install, checked before any work starts.

Each entry point that needs one calls `require(...)` (or `exit_if_missing(...)` in a `main`) first, so a plain
install fails in its first second with one line naming the package and the exact pip command, instead of a
ModuleNotFoundError in a worker process later (`tinysoundfont` under the eSpeak server's broken pipe, before
this module).

Why each one is not in `install_requires`:
  tinysoundfont  its `pyaudio` requirement (playback, unused here) builds only with PortAudio's headers, so
                 pip must install it with --no-deps, which install_requires cannot say.
  apache_beam    the `beam` extra: about 2 GB, and it pins an older protobuf than TensorFlow 2.21 (its own venv,
                 scripts/setup_beam.sh).
  pyarrow        only for Parquet indexes of `avcl.embed` (CSV without it).
"""
from __future__ import annotations

import dataclasses
import importlib
import sys


@dataclasses.dataclass(frozen=True)
class Package:
  module: str  # What `import` names.
  package: str  # What pip installs.
  pip: str  # The exact command.


PACKAGES = {
    "tinysoundfont": Package("tinysoundfont", "tinysoundfont", "pip install tinysoundfont --no-deps"),
    # Not `pip install -e '.[beam]'` into the main venv: apache-beam's protobuf pin would downgrade the one
    # TensorFlow 2.21 needs there. setup_beam.sh makes its own venv, which runs the ingest from the repo root.
    "apache_beam": Package("apache_beam", "apache-beam",
                           "bash scripts/setup_beam.sh, then run it with .venv-beam/bin/python"),
    "pyarrow": Package("pyarrow", "pyarrow", "pip install pyarrow"),
}


class MissingDependency(ImportError):
  """An optional package is missing; str() is the one-line hint."""


def hint(module: str, needed_for: str) -> str:
  p = PACKAGES[module]
  return f"{needed_for} needs the package {p.package}, which is not installed: {p.pip}"


def available(module: str) -> bool:
  """Whether `module` imports (an import, not a lookup, so a broken install counts as missing)."""
  try:
    importlib.import_module(module)
  except ImportError:
    return False
  return True


def require(module: str, needed_for: str) -> None:
  """Raises MissingDependency (one line: the package and the pip command) unless `module` imports."""
  if module not in PACKAGES:
    raise KeyError(f"{module!r} is not a known optional package ({', '.join(PACKAGES)})")
  if not available(module):
    raise MissingDependency(hint(module, needed_for))


def exit_if_missing(module: str, needed_for: str) -> None:
  """For a `main`: prints `error: <hint>` as one line to stderr and exits with status 1 unless `module`
  imports."""
  try:
    require(module, needed_for)
  except MissingDependency as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
