r"""Cloud TPU VMs and pod slices: create, copy the code, install, run `avcl.main` on every worker, logs, delete.

Every step is a plain `gcloud` command; `--dry-run` prints them (a runnable script) without calling gcloud.

    # One command: create a spot v4-64 slice (8 workers) through the queue, install, start training.
    python -m launch.tpu up --name avcl-v4 --zone us-central2-b --accelerator-type v4-64 --queued --spot \
        --config configs/paper_audioset.py --workdir gs://BUCKET/avcl/run1 \
        --override train.global_batch_size=4096
    python -m launch.tpu logs --name avcl-v4 --zone us-central2-b --follow      # worker 0, live
    python -m launch.tpu logs --name avcl-v4 --zone us-central2-b --accelerator-type v4-64 --out logs/
    python -m launch.tpu delete --name avcl-v4 --zone us-central2-b --queued    # stops the billing

Steps (each also a subcommand): `create` (a TPU VM, or with --queued a queued resource, optionally
--spot), `setup` (pack this checkout's tracked and untracked-but-not-ignored files, or `--code git` to
clone a repository, on every worker; `pip install -e . jax[tpu]`), `run` (start `python3 -m avcl.main` on
all workers at once under nohup, log in ~/avcl-run.log, pid in ~/avcl-run.pid; jax.distributed finds
the other workers by itself on a TPU slice), `logs`, `stop` (kills the run by its pid file), `delete`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time

from launch import common

REMOTE_DIR = "$HOME/avcl"  # Unquoted in remote commands so the worker's shell expands $HOME.
REMOTE_TARBALL = "avcl-code.tgz"  # Relative to the worker's home (scp's remote paths are).
REMOTE_LOG = "avcl-run.log"
REMOTE_PID = "avcl-run.pid"
STATUS_MARKER = "avcl-exit-status"  # `run --wait` (sweeps): each worker's line "avcl-exit-status N".
JAX_TPU = "jax[tpu]>=0.10,<0.11"  # Pulls the matching libtpu from PyPI.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Accelerator:
  gcloud_type: str  # The name gcloud takes, e.g. v5litepod-16 for "v5e-16".
  generation: str
  size: int  # The number in the name: TensorCores for v2-v4/v5p, chips for v5e/v6e.
  workers: int  # TPU VM hosts in the slice.
  devices: int  # JAX devices: one per core on v2/v3, one per chip (megacore or single core) from v4 on.
  runtime_version: str  # A default software version for this generation.


# Per generation: (name counts cores or chips, cores-or-chips per host, default runtime version).
_GENERATIONS = {
    "v2": ("cores", 8, "tpu-ubuntu2204-base"),
    "v3": ("cores", 8, "tpu-ubuntu2204-base"),
    "v4": ("cores", 8, "tpu-ubuntu2204-base"),
    "v5p": ("cores", 8, "v2-alpha-tpuv5"),
    "v5litepod": ("chips", 4, "v2-alpha-tpuv5-lite"),
    "v6e": ("chips", 4, "v2-alpha-tpuv6e"),
}


def parse_accelerator(name: str) -> Accelerator:
  """`v4-64` -> 8 workers; `v5e-256` (alias of v5litepod-256) -> 64 workers; `v5litepod-8` -> 1 worker."""
  m = re.fullmatch(r"(v2|v3|v4|v5p|v5e|v5litepod|v6e)-(\d+)", name.strip().lower())
  if not m:
    raise ValueError(f"--accelerator-type {name!r}: expected GENERATION-SIZE with generation one of "
                     "v2, v3, v4, v5p, v5e (v5litepod), v6e, e.g. v4-64 or v5e-256")
  gen, size = m.group(1), int(m.group(2))
  gen = "v5litepod" if gen == "v5e" else gen
  unit, per_host, runtime = _GENERATIONS[gen]
  if size < 1 or (size & (size - 1)) != 0:
    raise ValueError(f"--accelerator-type {name!r}: size {size} must be a power of two")
  if unit == "cores":
    if size < 8:
      raise ValueError(f"--accelerator-type {name!r}: {gen} slices start at {gen}-8")
    workers = size // per_host
  else:  # v5e/v6e: up to 8 chips sit in one host; larger slices have 4 chips per host.
    workers = 1 if size <= 8 else size // per_host
  devices = size // 2 if gen in ("v4", "v5p") else size
  return Accelerator(f"{gen}-{size}", gen, size, workers, devices, runtime)


def combine_statuses(output: str, workers: int) -> int:
  """One exit status for the slice from the workers' "avcl-exit-status N" lines in `output`.

  A failure (anything but 0 and common.PREEMPTED) wins; otherwise PREEMPTED if any worker was preempted;
  0 only when every worker reported 0. Fewer lines than workers (ssh failed, a worker vanished) is 1.
  """
  codes = [int(m) for m in re.findall(rf"{STATUS_MARKER} (\d+)", output)]
  failed = [c for c in codes if c not in (0, common.PREEMPTED)]
  if failed:
    return failed[0]
  if len(codes) < workers:
    return 1
  return common.PREEMPTED if common.PREEMPTED in codes else 0


class Tpu:
  """Builds and runs the gcloud commands for one slice."""

  def __init__(self, a: argparse.Namespace, runner: common.Runner):
    self.a = a
    self.r = runner
    self.accel = parse_accelerator(a.accelerator_type) if a.accelerator_type else None

  # ---- gcloud building blocks -------------------------------------------------------------------
  def _scope(self) -> list[str]:
    flags = [f"--zone={self.a.zone}"]
    if self.a.project:
      flags.append(f"--project={self.a.project}")
    return flags

  def ssh(self, command: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", self.a.name, *self._scope(), f"--worker={worker}",
            f"--command={command}"]

  def scp(self, src: str, dst: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", src, dst, *self._scope(), f"--worker={worker}"]

  def _need_accel(self, what: str) -> Accelerator:
    if self.accel is None:
      raise ValueError(f"{what} needs --accelerator-type (e.g. v4-64)")
    return self.accel

  # ---- steps --------------------------------------------------------------------------------------
  def create(self) -> None:
    accel = self._need_accel("create")
    runtime = self.a.runtime_version or accel.runtime_version
    self.r.note(f"{accel.gcloud_type}: {accel.workers} worker(s), {accel.devices} devices, runtime {runtime}"
                + (", spot" if self.a.spot else "") + (", queued" if self.a.queued else ""))
    spot = ["--spot"] if self.a.spot else []
    if self.a.queued:
      self.r.run(["gcloud", "compute", "tpus", "queued-resources", "create", self.a.name,
                  f"--node-id={self.a.name}", *self._scope(), f"--accelerator-type={accel.gcloud_type}",
                  f"--runtime-version={runtime}", *spot])
      self.wait_active()
    else:
      self.r.run(["gcloud", "compute", "tpus", "tpu-vm", "create", self.a.name, *self._scope(),
                  f"--accelerator-type={accel.gcloud_type}", f"--version={runtime}", *spot])

  def wait_active(self) -> None:
    """Polls the queued resource until it is ACTIVE (the slice exists); FAILED/SUSPENDED is an error."""
    describe = ["gcloud", "compute", "tpus", "queued-resources", "describe", self.a.name, *self._scope(),
                "--format=value(state.state)"]
    self.r.note(f"poll every {self.a.poll_s:.0f} s until the state is ACTIVE (timeout {self.a.wait_s:.0f} s)")
    deadline = time.monotonic() + self.a.wait_s
    while True:
      state = self.r.run(describe, capture=True).strip()
      if self.r.dry_run or state == "ACTIVE":
        return
      if state in ("FAILED", "SUSPENDED", "SUSPENDING"):
        raise SystemExit(f"queued resource {self.a.name} is {state}; see `gcloud compute tpus queued-resources "
                         f"describe {self.a.name} --zone={self.a.zone}`")
      if time.monotonic() > deadline:
        raise SystemExit(f"queued resource {self.a.name} still {state or 'unknown'} after {self.a.wait_s:.0f} s; "
                         "it stays queued: rerun `setup` and `run` once it is ACTIVE, or `delete` it")
      time.sleep(self.a.poll_s)

  def setup(self) -> None:
    if self.a.code == "git":
      if not self.a.repo:
        raise ValueError("--code git needs --repo URL (and optionally --ref)")
      fetch = (f"rm -rf {REMOTE_DIR} && git clone -q {shlex.quote(self.a.repo)} {REMOTE_DIR} && "
               f"git -C {REMOTE_DIR} checkout -q {shlex.quote(self.a.ref)}")
    else:
      tarball = self.pack()
      self.r.run(self.scp(tarball, f"{self.a.name}:{REMOTE_TARBALL}"))
      fetch = f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar xzf $HOME/{REMOTE_TARBALL} -C {REMOTE_DIR}"
    install = (f"cd {REMOTE_DIR} && python3 -m pip install -q -U pip && "
               f"python3 -m pip install -q -e . {shlex.quote(JAX_TPU)} && "
               # As scripts/setup.sh: tinysoundfont's pyaudio dependency is for playback only.
               "python3 -m pip install -q --no-deps 'tinysoundfont>=0.3,<0.4'")
    self.r.run(self.ssh(f"set -e; {fetch} && {install}"))

  def pack(self) -> str:
    """This checkout's tracked and untracked-but-not-ignored files as a .tgz (no .venv, workdirs, caches)."""
    out = os.path.join(tempfile.gettempdir(), f"{self.a.name}-avcl-code.tgz")
    self.r.note(f"pack `git ls-files --cached --others --exclude-standard` of {REPO_ROOT} into {out}")
    if self.r.dry_run:
      return out
    listed = subprocess.run(["git", "-C", REPO_ROOT, "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], check=True, capture_output=True, text=True).stdout
    with tarfile.open(out, "w:gz") as tar:
      for rel in sorted(set(p for p in listed.split("\0") if p)):
        path = os.path.join(REPO_ROOT, rel)
        if os.path.isfile(path):  # A tracked file deleted in the working tree is left out.
          tar.add(path, arcname=rel)
    return out

  def main_command(self) -> str:
    if not self.a.config or not self.a.workdir:
      raise ValueError("run needs --config and --workdir")
    accel = self._need_accel("run")
    if accel.workers > 1 and not self.a.workdir.startswith("gs://"):
      raise ValueError(f"--workdir {self.a.workdir!r}: a {accel.workers}-worker slice needs a shared gs:// "
                       "workdir (every worker writes its part of each checkpoint there)")
    if self.a.code == "local" and not os.path.isfile(os.path.join(REPO_ROOT, self.a.config)):
      raise ValueError(f"--config {self.a.config!r}: no such file in {REPO_ROOT} (give a repo-relative path)")
    overrides = common.parse_overrides(self.a.override)
    batch = overrides.get("train.global_batch_size")
    if batch is not None and (not batch.isdigit() or int(batch) % accel.devices):
      raise ValueError(f"--override train.global_batch_size={batch}: must be a multiple of the "
                       f"{accel.devices} devices of a {accel.gcloud_type}")
    argv = common.main_command(python="python3", config=self.a.config, workdir=self.a.workdir,
                               mode=self.a.mode, overrides=overrides, distributed=["--distributed=auto"])
    env = []
    for item in self.a.env:
      if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", item, flags=re.S):
        raise ValueError(f"--env {item!r}: expected NAME=VALUE")
      env.append(item)
    return shlex.join(["env", *env, *argv] if env else argv)

  def run(self, wait: bool = False, log: str = REMOTE_LOG) -> int:
    """Starts the run on every worker; with `wait` the ssh stays open until it ends (sweeps use this) and
    the result is the run's exit status over all workers (`combine_statuses`); without, 0 once started.

    nohup + redirected stdin/stdout + background: the ssh session can end, training keeps running.
    """
    cmd = self.main_command()
    start = (f"cd {REMOTE_DIR} || exit 1; nohup {cmd} > $HOME/{log} 2>&1 < /dev/null & "
             f"pid=$!; echo $pid > $HOME/{REMOTE_PID}")
    if not wait:
      self.r.run(self.ssh(start))
      self.r.note(f"follow worker 0: python -m launch.tpu logs --name {self.a.name} --zone {self.a.zone} --follow")
      return 0
    # Each worker prints its run's exit status on a marked line: gcloud's own exit status over several
    # workers does not say which status each had, and a preempted run (PREEMPTED) must not read as a failure.
    out = self.r.run(self.ssh(f"{start}; wait $pid; s=$?; echo {STATUS_MARKER} $s; exit $s"),
                     check=False, capture=True)
    if self.r.dry_run:
      return 0
    return combine_statuses(out, self._need_accel("run").workers)

  def logs(self) -> None:
    if self.a.follow:
      self.r.run(self.ssh(f"tail -n {self.a.lines} -F $HOME/{REMOTE_LOG}", worker=str(self.a.log_worker)),
                 check=False)
      return
    accel = self._need_accel("logs (to know the worker count)")
    if not self.r.dry_run:
      os.makedirs(self.a.out, exist_ok=True)
    for w in range(accel.workers):
      self.r.run(self.scp(f"{self.a.name}:{REMOTE_LOG}", os.path.join(self.a.out, f"worker-{w}.log"),
                          worker=str(w)))

  def stop(self) -> None:
    self.r.run(self.ssh(f"if [ -f $HOME/{REMOTE_PID} ]; then kill $(cat $HOME/{REMOTE_PID}) 2>/dev/null || "
                        f"true; rm -f $HOME/{REMOTE_PID}; fi"))

  def status(self) -> None:
    kind = ["queued-resources"] if self.a.queued else ["tpu-vm"]
    self.r.run(["gcloud", "compute", "tpus", *kind, "describe", self.a.name, *self._scope()])

  def delete(self) -> None:
    if self.a.queued:  # --force also deletes the slice the queued resource created.
      self.r.run(["gcloud", "compute", "tpus", "queued-resources", "delete", self.a.name, *self._scope(),
                  "--force", "--quiet"])
    else:
      self.r.run(["gcloud", "compute", "tpus", "tpu-vm", "delete", self.a.name, *self._scope(), "--quiet"])

  def up(self) -> None:
    self.main_command()  # Validate the run's arguments before paying for a slice.
    self.create()
    self.setup()
    self.run()


def build_parser() -> argparse.ArgumentParser:
  common_args = argparse.ArgumentParser(add_help=False)
  common_args.add_argument("--name", required=True, help="TPU (and queued resource) name.")
  common_args.add_argument("--zone", required=True, help="e.g. us-central2-b (v4), us-west4-a (v5e).")
  common_args.add_argument("--project", default=None, help="GCP project (default: gcloud's configured one).")
  common_args.add_argument("--accelerator-type", default=None,
                           help="Slice, e.g. v4-8, v4-64, v5e-256 (v5litepod-256), v5p-128, v6e-64.")
  common_args.add_argument("--runtime-version", default=None,
                           help="TPU software version (default per generation, e.g. tpu-ubuntu2204-base).")
  common_args.add_argument("--queued", action="store_true", help="Go through a queued resource.")
  common_args.add_argument("--spot", action="store_true", help="Spot capacity (preemptible, cheaper).")
  common_args.add_argument("--config", default=None, help="Repo-relative config file.")
  common_args.add_argument("--workdir", default=None, help="gs://BUCKET/path shared by all workers.")
  common_args.add_argument("--mode", default="train_and_eval", choices=("train", "eval", "train_and_eval"))
  common_args.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                           help="Config override, repeatable: --override train.num_steps=100000.")
  common_args.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                           help="Environment variable for avcl.main on the workers, repeatable.")
  common_args.add_argument("--code", default="local", choices=("local", "git"),
                           help="local: copy this checkout; git: clone --repo at --ref on each worker.")
  common_args.add_argument("--repo", default=None, help="Git URL for --code git.")
  common_args.add_argument("--ref", default="main", help="Branch, tag or commit for --code git.")
  common_args.add_argument("--follow", action="store_true", help="logs: stream one worker's log.")
  common_args.add_argument("--log-worker", type=int, default=0, help="logs --follow: which worker.")
  common_args.add_argument("--lines", type=int, default=100, help="logs --follow: lines of history.")
  common_args.add_argument("--out", default="tpu-logs", help="logs: local folder for worker-<i>.log.")
  common_args.add_argument("--poll-s", type=float, default=30.0, help="Queued resource poll interval.")
  common_args.add_argument("--wait-s", type=float, default=6 * 3600.0, help="Queued resource wait limit.")
  common_args.add_argument("--dry-run", action="store_true", help="Print the commands, call nothing.")
  p = argparse.ArgumentParser(prog="python -m launch.tpu", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="step", required=True)
  for step, text in [("create", "Create the TPU VM / slice (or queued resource)."),
                     ("setup", "Copy or clone the code to every worker and install it."),
                     ("run", "Start avcl.main on every worker under nohup."),
                     ("logs", "Fetch every worker's log, or --follow one."),
                     ("stop", "Kill the run on every worker."),
                     ("status", "Describe the TPU or queued resource."),
                     ("delete", "Delete the slice (or queued resource and its slice)."),
                     ("up", "create, setup and run in order.")]:
    sub.add_parser(step, parents=[common_args], help=text, description=text)
  return p


def main(argv=None) -> int:
  p = build_parser()
  a = p.parse_args(argv)
  runner = common.Runner(dry_run=a.dry_run)
  try:
    tpu = Tpu(a, runner)
    getattr(tpu, a.step)()
  except ValueError as e:
    p.error(str(e))
  return 0


if __name__ == "__main__":
  sys.exit(main())
