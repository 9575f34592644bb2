r"""N `avcl.main` processes on this machine, joined by jax.distributed over CPU collectives.

This is the multi-host path of a TPU pod in miniature: every process reads only its share of the data,
the global batch spans all processes, checkpoints go through orbax's multi-process path. It runs on any
laptop and in CI, so the multi-host code is exercised without a pod.

    python -m launch.local --num-processes 2 --devices-per-process 4 \
        --config configs/default.py --workdir workdirs/mp --override train.num_steps=100

Each process sees `--devices-per-process` simulated CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=K`); the coordinator listens on 127.0.0.1 at a free
port. Logs go to `LOG_DIR/process_<i>.log` (default `WORKDIR/logs`). The launcher waits for every
process; if one fails the others are stopped and the launcher exits with the failed process's status.
"""
from __future__ import annotations

import argparse
import os
import sys

from data_pipeline import paths
from launch import common, procs


def cpu_xla_flags(devices: int, inherited: str = "") -> str:
  """`XLA_FLAGS` for a process with `devices` simulated CPU devices, keeping any other inherited flag."""
  kept = [f for f in inherited.split() if not f.startswith("--xla_force_host_platform_device_count")]
  return " ".join(kept + [f"--xla_force_host_platform_device_count={devices}"])


def build_members(*, num_processes: int, devices_per_process: int, config: str, workdir: str, mode: str,
                  overrides, log_dir: str, port: int, python: str = sys.executable,
                  inherited_xla_flags: str = "", module: str = "avcl.main") -> list[procs.Member]:
  if num_processes < 1:
    raise ValueError(f"--num-processes {num_processes}: must be >= 1")
  if devices_per_process < 1:
    raise ValueError(f"--devices-per-process {devices_per_process}: must be >= 1")
  env = {
      "JAX_PLATFORMS": "cpu",
      "XLA_FLAGS": cpu_xla_flags(devices_per_process, inherited_xla_flags),
      "CUDA_VISIBLE_DEVICES": "",  # Neither JAX nor TensorFlow may pick up a GPU in CPU mode.
  }
  members = []
  for i in range(num_processes):
    if num_processes == 1:
      dist = ["--distributed=off"]
    else:
      dist = common.distributed_flags(coordinator=f"127.0.0.1:{port}", num_processes=num_processes,
                                      process_id=i)
    argv = common.main_command(python=python, config=config, workdir=workdir, mode=mode,
                               overrides=overrides, distributed=dist, module=module)
    members.append(procs.Member(argv=argv, env=dict(env), log_path=os.path.join(log_dir, f"process_{i}.log")))
  return members


def default_log_dir(workdir: str) -> str:
  if paths.is_remote(workdir):
    raise ValueError(f"--workdir {workdir!r} is remote: pass --log-dir with a local folder for the logs")
  return os.path.join(workdir, "logs")


def add_args(p: argparse.ArgumentParser, workdir: bool = True) -> None:
  """The arguments every launcher shares (the sweep launcher names workdirs itself: `workdir=False`)."""
  p.add_argument("--config", required=True, help="Config file, e.g. configs/default.py.")
  if workdir:
    p.add_argument("--workdir", required=True, help="Where checkpoints, metrics and results go.")
  p.add_argument("--mode", default="train_and_eval", choices=("train", "eval", "train_and_eval"))
  p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                 help="Config override, repeatable: --override train.num_steps=100.")
  p.add_argument("--dry-run", action="store_true", help="Print the commands instead of running them.")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.local", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  add_args(p)
  p.add_argument("--num-processes", type=int, default=2, help="Processes (simulated hosts).")
  p.add_argument("--devices-per-process", type=int, default=1, help="Simulated CPU devices per process.")
  p.add_argument("--log-dir", default=None, help="Per-process logs (default WORKDIR/logs).")
  p.add_argument("--port", type=int, default=0, help="Coordinator port on 127.0.0.1 (0: a free one).")
  p.add_argument("--timeout", type=float, default=None, help="Stop everything after this many seconds.")
  a = p.parse_args(argv)
  try:
    overrides = common.parse_overrides(a.override)
    log_dir = a.log_dir or default_log_dir(a.workdir)
    members = build_members(num_processes=a.num_processes, devices_per_process=a.devices_per_process,
                            config=a.config, workdir=a.workdir, mode=a.mode, overrides=overrides,
                            log_dir=log_dir, port=a.port or common.free_port(),
                            inherited_xla_flags=os.environ.get("XLA_FLAGS", ""))
  except ValueError as e:
    p.error(str(e))
  if a.dry_run:
    procs.print_group(members)
    return 0
  return procs.run_group(members, timeout_s=a.timeout)


if __name__ == "__main__":
  sys.exit(main())
