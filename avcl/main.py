r"""Pretrain and/or evaluate: `python -m avcl.main --config configs/default.py --workdir DIR`.

  --mode train | eval | train_and_eval
  --config.train.num_steps=100 ...            any config field can be overridden on the command line
  --allow_config_change                       resume WORKDIR even though the config differs from its
                                              config.json in fields that change what training computes
                                              (the change is logged to WORKDIR/config_changes.jsonl)

Exit status (avcl/exit_codes.py): 0 finished, 1 a clear error, 75 (exit_codes.PREEMPTED) preempted: SIGTERM
arrived, a checkpoint was saved, and running the same command again resumes the run.

Multi-process (one process per host, or several on one machine with CPU collectives):
  --distributed auto   (default) join a cluster when the environment shows one: a Cloud TPU pod slice
                       (TPU_WORKER_HOSTNAMES with several hosts), SLURM or Open MPI with several tasks, or
                       when --coordinator_address is given; jax.distributed.initialize() auto-detects the rest
  --distributed on     always call jax.distributed.initialize (with the flags below when given)
  --distributed off    single process
  --coordinator_address=HOST:PORT --num_processes=N --process_id=I   explicit cluster (e.g. local tests)

The embedded world is generated at config.data.root on first use (once, under a file lock, when
config.data.generate_if_missing).

Imports: this module is the one place in `avcl` that imports the project inside functions, on purpose.
`--help`, the flag checks and the optional-package check (`data_pipeline.optional`) must run before
TensorFlow and JAX load (seconds), so JAX, TensorFlow and every `avcl` module that imports them are
imported where they are first needed (tests/test_layers.py allows it here only).
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from avcl import host_memory  # ctypes only: no JAX or TensorFlow at import.
from data_pipeline import optional, paths, tf_cpu

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config.json, checkpoints, TensorBoard events "
                               "(local or gs://).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "train_and_eval"], "What to run.")
_DISTRIBUTED = flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                                 "Whether to call jax.distributed.initialize (see the module docstring).")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the cluster.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")

_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume WORKDIR although the config differs from WORKDIR/config.json in "
    "fields outside avcl.checkpoints.RESUMABLE_FIELDS; every change is logged to config_changes.jsonl.")

flags.mark_flags_as_required(["config", "workdir"])


def _cluster_in_environment() -> str | None:
  """Why the environment looks like a multi-process job (None when it does not)."""
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  if len([h for h in hosts.split(",") if h.strip()]) > 1:
    return "TPU_WORKER_HOSTNAMES lists several hosts (Cloud TPU pod slice)"
  for var, what in (("SLURM_NTASKS", "SLURM"), ("OMPI_COMM_WORLD_SIZE", "Open MPI")):
    if int(os.environ.get(var, "1") or 1) > 1:
      return f"{var}={os.environ[var]} ({what})"
  return None


def initialize_distributed(mode: str, coordinator: str | None, num_processes: int | None,
                           process_id: int | None) -> bool:
  """Calls jax.distributed.initialize when `mode` (auto|on|off) and the environment ask for it."""
  import jax  # pylint: disable=g-import-not-at-top
  explicit = coordinator is not None
  if explicit and (num_processes is None or process_id is None):
    raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
  if (num_processes is not None or process_id is not None) and not explicit:
    raise app.UsageError("--num_processes/--process_id need --coordinator_address")
  if mode == "off":
    if explicit:
      raise app.UsageError("--distributed=off contradicts --coordinator_address")
    return False
  reason = "explicit --coordinator_address" if explicit else _cluster_in_environment()
  if mode == "auto" and reason is None:
    return False
  logging.info("jax.distributed.initialize (%s)", reason or "--distributed=on")
  if explicit:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()  # Cloud TPU, SLURM, Open MPI: the cluster is auto-detected.
  return True


def _world_interrupted(root: str) -> bool:
  """The generator's marker without its last write (world.json): a killed generation's partial shards."""
  from data_pipeline.world import generator  # pylint: disable=g-import-not-at-top  (main defers its imports)
  return (os.path.exists(os.path.join(root, generator.GENERATING_MARKER))
          and not os.path.exists(os.path.join(root, "world.json")))


def _world_present(root: str) -> bool:
  """world.json is the generator's last write; a pretrain/ folder is any other dataset in the same layout."""
  if _world_interrupted(root):
    return False
  return os.path.exists(os.path.join(root, "world.json")) or os.path.isdir(os.path.join(root, "pretrain"))


def will_generate_world(config) -> bool:
  """Whether `ensure_world(config)` would generate the embedded world (so needs tinysoundfont)."""
  root = config.data.root
  return not paths.is_remote(root) and bool(config.data.generate_if_missing) and not _world_present(root)


def ensure_world(config) -> None:
  """Generates the embedded world at config.data.root if it is missing (once across processes)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  from data_pipeline.world import generator  # pylint: disable=g-import-not-at-top  (main defers its imports)

  root = config.data.root
  if paths.is_remote(root):
    # Remote data is prepared beforehand (generate locally, copy with gsutil); nothing to lock.
    return

  if not os.path.exists(os.path.join(root, "world.json")):
    # A file lock serialises the processes of one machine (a process that finds the lock held waits for the
    # generation to finish instead of reading half-written shards); each host of a pod generates its own
    # (deterministic, seeded) copy on its local disk.
    os.makedirs(os.path.dirname(os.path.abspath(root)) or ".", exist_ok=True)
    with open(os.path.abspath(root) + ".lock", "w") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      try:
        if not _world_present(root):
          if not config.data.generate_if_missing:
            what = (f"an interrupted embedded-world generation (a {generator.GENERATING_MARKER} marker, no "
                    "world.json: its shards may be partial)" if _world_interrupted(root)
                    else "no data (no world.json, no pretrain/)")
            raise FileNotFoundError(f"config.data.root={root!r} holds {what} and "
                                    "config.data.generate_if_missing is False")
          # Checked here too (main() checks before TensorFlow and JAX load) for callers of run().
          optional.require("tinysoundfont", f"generating the embedded world at config.data.root={root!r}")
          cmd = [sys.executable, "-m", "data_pipeline.world", "--output", root]
          if config.data.world_clips:
            cmd += ["--clips", str(config.data.world_clips)]
          if config.data.get("world_task_clips", 0):
            cmd += ["--task-clips", str(config.data.world_task_clips)]
          logging.info("Generating the embedded world: %s", " ".join(cmd))
          env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # Generation is CPU work; leave GPUs to JAX.
          subprocess.run(cmd, check=True, env=env)
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("avcl embedded world ready")


def run(config, workdir: str, mode: str, *, allow_config_change: bool = False) -> dict:
  """Runs `mode` for `config` in `workdir`; returns {"train": ..., "eval": ...} results."""
  import jax  # pylint: disable=g-import-not-at-top

  from avcl import config_validation  # pylint: disable=g-import-not-at-top

  # Validate first: a bad override fails here, before data generation or any compile.
  config_validation.validate_config(config, num_devices=jax.device_count())
  out = {}
  if mode in ("train", "train_and_eval"):
    from avcl import train  # pylint: disable=g-import-not-at-top
    ensure_world(config)
    out["train"] = train.train(config, workdir, allow_config_change=allow_config_change)
    if out["train"]["status"] == "preempted":
      return out
  if mode in ("eval", "train_and_eval"):
    from avcl.evaluate import runner as eval_runner  # pylint: disable=g-import-not-at-top
    if mode == "eval":
      ensure_world(config)
    out["eval"] = eval_runner.evaluate(workdir, config)
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    allocator_policy = host_memory.policy_from_env()  # A bad $AVCL_HOST_MALLOC fails before anything loads.
  except ValueError as e:
    sys.exit(f"error: {e}")
  if will_generate_world(_CONFIG.value):
    # First, before TensorFlow and JAX load (seconds): a plain `pip install -e .` lacks tinysoundfont.
    optional.exit_if_missing("tinysoundfont", "python -m avcl.main (generating the embedded world at "
                             f"config.data.root={_CONFIG.value.data.root!r})")
  # TensorFlow (tf.data, TensorBoard) must never take an accelerator from JAX: hide GPUs from it first.
  tf_cpu.import_tf()
  import jax  # pylint: disable=g-import-not-at-top

  initialize_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  # On the CPU backend XLA's buffers come from the C allocator: keep freed pages mapped (avcl/host_memory.py).
  allocator = host_memory.apply(allocator_policy, platform=jax.default_backend())
  logging.info("JAX %s: %d processes, %d devices (%d local) on %s; host allocator policy %s", jax.__version__,
               jax.process_count(), jax.device_count(), jax.local_device_count(), jax.devices()[0].platform,
               allocator)
  from avcl import checkpoints, config_validation, exit_codes, train  # pylint: disable=g-import-not-at-top
  try:
    out = run(_CONFIG.value, _WORKDIR.value, _MODE.value, allow_config_change=_ALLOW_CONFIG_CHANGE.value)
  except (config_validation.ConfigError, train.NonFiniteLossError, checkpoints.CheckpointError,
          FileNotFoundError, optional.MissingDependency) as e:
    # Expected failures: a clear message and exit status 1, no traceback.
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  if out.get("train", {}).get("status") == "preempted":
    # Not 0: a sweep or a job scheduler must not take a preempted run for a finished one.
    logging.warning("preempted at step %d: exiting with status %d; rerun the same command to resume",
                    out["train"]["step"], exit_codes.PREEMPTED)
    sys.exit(exit_codes.PREEMPTED)


if __name__ == "__main__":
  app.run(main)
