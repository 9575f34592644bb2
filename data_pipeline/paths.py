"""Local and remote paths: the one test for "remote" (gs://, s3://, ram://, ...), and file access that works
for both through TensorFlow's file system layer (`tf.io.gfile`).

Every place that accepts a path (workdirs, data roots, export directories, embed outputs) asks `is_remote`
here rather than spelling its own test. Checkpoints go through `etils.epath` (orbax's own layer), which
reaches gs:// the same way. TensorFlow is imported on first use only: `launch` and `data_pipeline` tools
that only ask `is_remote` stay light.
"""
from __future__ import annotations

import contextlib
import glob as _glob
import os
import re

from data_pipeline import tf_cpu  # Light: TensorFlow itself loads on the first remote file access.

# A URL scheme (RFC 3986: a letter, then letters, digits, "+", "-", "."), then "://". Windows drive letters
# ("C:\") and local names containing "://" further along are not URLs.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path) -> bool:
  """Whether `path` is a URL for a file system other than the local one (gs://BUCKET/..., ram://...)."""
  return bool(_SCHEME.match(os.fspath(path)))


def join(base: str, *parts: str) -> str:
  """`base/part/...`: os.path.join for local paths, "/" for URLs (never a backslash)."""
  if is_remote(base):
    return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
  return os.path.join(base, *parts)


def absolute(path: str) -> str:
  """A local path made absolute (with ~ expanded); a URL unchanged."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def _gfile():
  return tf_cpu.import_tf().io.gfile


def exists(path: str) -> bool:
  return os.path.exists(path) if not is_remote(path) else _gfile().exists(path)


def isdir(path: str) -> bool:
  return os.path.isdir(path) if not is_remote(path) else _gfile().isdir(path)


def makedirs(path: str) -> None:
  if is_remote(path):
    _gfile().makedirs(path)
  else:
    os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with open(path, "rb") as f:
      return f.read()
  with _gfile().GFile(path, "rb") as f:
    return f.read()


def write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` whole, replacing any old file: under a temporary name, then renamed (a reader
  never sees a part)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  if is_remote(path):
    # A temporary object renamed over the old one: opening an existing ram:// file for writing appends to it
    # (TensorFlow 2.21), and a gs:// rename with overwrite replaces the object as a whole.
    gfile = _gfile()
    with gfile.GFile(tmp, "wb") as f:
      f.write(data)
    gfile.rename(tmp, path, overwrite=True)
    return
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def open_write(path: str):
  """A binary file to write `path` through, streamed: it is written under a temporary name and renamed to
  `path` once the block exits without an error (a reader never sees a part; an error leaves no file)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  remote = is_remote(path)
  f = _gfile().GFile(tmp, "wb") if remote else open(tmp, "wb")
  try:
    with f:
      yield f
  except BaseException:
    (_gfile().remove if remote else os.remove)(tmp)
    raise
  if remote:
    _gfile().rename(tmp, path, overwrite=True)
  else:
    os.replace(tmp, path)


def open_read(path: str):
  """A binary file object for reading `path` (local or URL), seekable."""
  return _gfile().GFile(path, "rb") if is_remote(path) else open(path, "rb")


def walk_files(directory: str):
  """Every file under `directory`, recursively, sorted (local or URL)."""
  if not is_remote(directory):
    out = []
    for root, dirs, files in os.walk(directory):
      dirs.sort()
      out += [os.path.join(root, f) for f in files]
    return sorted(out)
  out = []
  for root, _, files in _gfile().walk(directory):
    out += [join(root, f) for f in files]
  return sorted(out)


def remove(path: str) -> None:
  if is_remote(path):
    _gfile().remove(path)
  else:
    os.remove(path)


def glob(pattern: str) -> list[str]:
  """Paths matching `pattern` (local glob, or tf.io.gfile.glob for URLs), sorted."""
  if is_remote(pattern):
    return sorted(_gfile().glob(pattern))
  return sorted(_glob.glob(pattern))


def listdir(path: str) -> list[str]:
  return sorted(_gfile().listdir(path) if is_remote(path) else os.listdir(path))
