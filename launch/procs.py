"""A group of local processes that live and die together (the local multi-process and GPU launchers).

A multi-process JAX job is only useful whole: when one process dies, the others block forever in their
next collective. So the group watches every member, and the first failure stops the rest and becomes the
group's exit status. Each member writes its own log file; the launcher's own SIGINT/SIGTERM is passed on.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from launch import common


@dataclasses.dataclass
class Member:
  argv: list[str]
  env: dict[str, str]  # Variables set on top of the launcher's environment.
  log_path: str


def _stop(procs: Sequence[subprocess.Popen], grace_s: float) -> None:
  """SIGTERM every live member's process group, then SIGKILL whatever is left after `grace_s`."""
  for p in procs:
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGTERM)
      except ProcessLookupError:
        pass
  deadline = time.monotonic() + grace_s
  for p in procs:
    remaining = max(0.0, deadline - time.monotonic())
    try:
      p.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
      p.wait()


def run_group(members: Sequence[Member], *, cwd: str | None = None, grace_s: float = 10.0,
              poll_s: float = 0.2, timeout_s: float | None = None, echo=None) -> int:
  """Starts every member, waits for all, returns 0 or the exit status of the first member that failed.

  A member killed by a signal counts as failed with status 128 + signal (the shell's convention).
  A member that exits with common.PREEMPTED (saved a checkpoint after SIGTERM) has not failed: the others
  are left to finish their part of that save, and the group returns PREEMPTED once all have exited with 0
  or PREEMPTED.
  `timeout_s` bounds the whole group (then everything is stopped and 124 is returned, as `timeout` does).
  """
  echo = echo or sys.stderr
  procs: list[subprocess.Popen] = []
  logs = []
  received: list[int] = []

  def forward(signum, _frame):
    received.append(signum)

  # Signal handlers can only be set from the main thread; elsewhere the caller handles its own signals.
  in_main = threading.current_thread() is threading.main_thread()
  old_handlers = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)} if in_main else {}
  try:
    for i, m in enumerate(members):
      os.makedirs(os.path.dirname(os.path.abspath(m.log_path)), exist_ok=True)
      log = open(m.log_path, "ab")
      logs.append(log)
      # Each member leads its own process group, so stopping it also stops anything it started.
      procs.append(subprocess.Popen(m.argv, env={**os.environ, **m.env}, cwd=cwd, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True))
      print(f"[launch] process {i} pid {procs[-1].pid} -> {m.log_path}", file=echo, flush=True)
    start = time.monotonic()
    while True:
      if received:
        print(f"[launch] got signal {received[0]}: stopping all processes", file=echo, flush=True)
        _stop(procs, grace_s)
        # SIGTERM passed on to avcl.main makes it save and exit PREEMPTED; report that, so a sweep resumes
        # the run later instead of counting it failed.
        if all(p.returncode in (0, common.PREEMPTED) for p in procs) and any(
            p.returncode == common.PREEMPTED for p in procs):
          return common.PREEMPTED
        return 128 + received[0]
      codes = [p.poll() for p in procs]
      failed = [(i, c) for i, c in enumerate(codes) if c is not None and c not in (0, common.PREEMPTED)]
      if failed:
        i, code = failed[0]
        status = code if code > 0 else 128 - code
        print(f"[launch] process {i} exited with status {status} (log: {members[i].log_path}); "
              "stopping the others", file=echo, flush=True)
        _stop(procs, grace_s)
        return status
      if all(c is not None for c in codes):
        return common.PREEMPTED if common.PREEMPTED in codes else 0
      if timeout_s is not None and time.monotonic() - start > timeout_s:
        print(f"[launch] group ran past {timeout_s:.0f} s: stopping all processes", file=echo, flush=True)
        _stop(procs, grace_s)
        return 124
      time.sleep(poll_s)
  finally:
    for p in procs:
      if p.poll() is None:  # Only reached on an exception inside the loop: leave nothing behind.
        _stop(procs, grace_s)
        break
    for log in logs:
      log.close()
    for s, h in old_handlers.items():
      signal.signal(s, h)


def print_group(members: Sequence[Member], out=None, cwd: str | None = None) -> None:
  """The dry-run form of `run_group`: one shell line per member, backgrounded, then `wait`."""
  out = out or sys.stdout
  if cwd:
    print(f"cd {shlex.quote(cwd)}", file=out)
  for d in sorted({os.path.dirname(m.log_path) for m in members}):
    print(f"mkdir -p {shlex.quote(d)}", file=out)
  for m in members:
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in m.env.items())
    line = f"{env} {shlex.join(m.argv)}" if env else shlex.join(m.argv)
    print(f"{line} > {shlex.quote(m.log_path)} 2>&1 &", file=out)
  print("wait", file=out, flush=True)
