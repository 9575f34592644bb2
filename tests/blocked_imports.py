"""Runs a module as `python -m` would, with some top-level packages made unimportable (a sys.meta_path finder
that raises), to test what a plain install without them does.

    python tests/blocked_imports.py BLOCKED[,BLOCKED...] MODULE [ARGS...]

BLOCKED "-" blocks nothing. Each import of a blocked package (or of its submodules) raises
ModuleNotFoundError, as when it is not installed; the names tried are appended to $AVCL_BLOCKED_LOG if set.
"""
import importlib.abc
import os
import runpy
import sys


class Blocker(importlib.abc.MetaPathFinder):
  def __init__(self, names):
    self.names = set(names)

  def find_spec(self, fullname, path=None, target=None):
    if fullname.split(".")[0] in self.names:
      log = os.environ.get("AVCL_BLOCKED_LOG")
      if log:
        with open(log, "a") as f:
          f.write(fullname + "\n")
      raise ModuleNotFoundError(f"No module named {fullname!r} (blocked by tests/blocked_imports.py)",
                                name=fullname)
    return None


def main():
  blocked, module, args = sys.argv[1], sys.argv[2], sys.argv[3:]
  names = [] if blocked == "-" else blocked.split(",")
  for name in names:
    if any(m == name or m.startswith(name + ".") for m in sys.modules):
      raise SystemExit(f"{name} was imported before the blocker was installed")
  sys.meta_path.insert(0, Blocker(names))
  sys.argv = [module] + args
  runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
  main()
