"""Training as separate processes: SIGKILL and restart resumes, SIGTERM saves first (through avcl.main on
tiny shards written with the schema writer), and two jax.distributed processes agree with one process."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from avcl import checkpoints, exit_codes, train
from launch import sweep
from tests import test_train, tiny_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def env():
  e = dict(os.environ)
  e.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
           JAX_COMPILATION_CACHE_DIR=tiny_data.JAX_CACHE_DIR,
           JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
  return e


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
  return tiny_data.write_pretrain_shards(str(tmp_path_factory.mktemp("data")), num_clips=32, seconds=1.0)


def _main_cmd(workdir, data_root, *overrides):
  return [sys.executable, "-m", "avcl.main", "--config", os.path.join(REPO, "configs", "test_tiny.py"),
          "--workdir", str(workdir), f"--config.data.root={data_root}", "--config.data.generate_if_missing=False",
          *overrides]


def _finished_steps(workdir):
  d = os.path.join(str(workdir), checkpoints.CHECKPOINT_DIR)
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _wait_for(proc, predicate, timeout):
  end = time.time() + timeout
  while time.time() < end:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.2)
  return False


def _adam_counts(state):
  return [int(x) for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x) == 0]


def _losses(workdir):
  """{step: loss} from the run's TensorBoard events; a step logged twice (by a killed run and again after
  its resume) keeps the later value (event files are named by their start time)."""
  out = {}
  for step, value in sweep.read_scalars(str(workdir), "loss"):
    out[step] = value
  return out


@pytest.mark.slow
def test_sigkill_then_restart_resumes_from_last_checkpoint(tmp_path, env, data_root):
  """SIGKILL mid-run, restart: it resumes from the newest checkpoint and, through the real tf.data pipeline,
  reads the batches the uninterrupted run read, so every step's loss equals that run's."""
  steps = ["--config.train.num_steps=12", "--config.train.checkpoint_every=2", "--config.train.log_every=1"]
  ref = subprocess.run(_main_cmd(tmp_path / "ref", data_root, *steps), env=env, capture_output=True, text=True,
                       timeout=600)
  assert ref.returncode == 0, (ref.stdout + ref.stderr)[-3000:]
  work = tmp_path / "w"
  cmd = _main_cmd(work, data_root, *steps)
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    assert _wait_for(proc, lambda: any(s >= 4 for s in _finished_steps(work)), timeout=400), \
        proc.communicate()[0][-3000:] if proc.poll() is not None else "no checkpoint 4 in time"
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  killed_at = max(_finished_steps(work))
  assert 4 <= killed_at < 12

  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
  log = out.stdout + out.stderr
  assert out.returncode == 0, log[-3000:]
  resumed = re.search(r"Resumed .* from checkpoint step (\d+)", log)
  assert resumed and int(resumed.group(1)) == killed_at, log[-3000:]
  logged = [int(s) for s in re.findall(r"step (\d+)/12 \|", log)]
  assert logged == list(range(killed_at + 1, 13))  # Continues from the checkpoint, not from 0.

  config = checkpoints.load_config(work)
  final = _restore(work, 12, config)
  at_kill = _restore(work, killed_at, config)
  assert int(final["step"]) == 12 and int(at_kill["step"]) == killed_at
  assert set(_adam_counts(final)) == {12}  # The optimizer's step count continued too.
  assert set(_adam_counts(at_kill)) == {killed_at}

  # The loss curve: steps after the resume (and before the kill) equal the uninterrupted run's. Before this
  # was fixed tf.data was reseeded with the resume step, and every step after the resume differed.
  expected, got = _losses(tmp_path / "ref"), _losses(work)
  assert sorted(expected) == sorted(got) == list(range(1, 13))
  np.testing.assert_allclose([got[s] for s in range(1, 13)], [expected[s] for s in range(1, 13)], rtol=1e-5,
                             err_msg=f"loss per step, killed at checkpoint {killed_at} and resumed")


@pytest.mark.slow
def test_sigterm_saves_before_exit(tmp_path, env, data_root):
  work = tmp_path / "w"
  cmd = _main_cmd(work, data_root, "--config.train.num_steps=100000", "--config.train.checkpoint_every=3",
                  "--config.train.log_every=1")
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    assert _wait_for(proc, lambda: 3 in _finished_steps(work), timeout=400), "no checkpoint 3 in time"
    time.sleep(1.0)  # A few more steps, so the SIGTERM step is usually not a periodic one.
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=300)[0]
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == exit_codes.PREEMPTED, log[-3000:]  # Not 0: a sweep must resume it.
  assert "exiting with status 75; rerun the same command to resume" in log
  saved = re.search(r"SIGTERM: saved checkpoint step (\d+), stopping", log)
  assert saved, log[-3000:]
  step = int(saved.group(1))
  assert max(_finished_steps(work)) == step
  state = _restore(work, step, checkpoints.load_config(work))
  assert int(state["step"]) == step


def _restore(workdir, step, config):
  return test_train._restore_all(str(workdir), step, config)[0]  # pylint: disable=protected-access


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path, env):
  """2 processes x 2 devices (jax.distributed, CPU collectives) vs this process's 8 devices, same batches."""
  num_steps = 3
  port = _free_port()
  procs = []
  for i in range(2):
    cmd = [sys.executable, "-m", "tests.mp_train_worker", "--port", str(port), "--num_processes", "2",
           "--process_id", str(i), "--workdir", str(tmp_path / "mp"), "--out", str(tmp_path / f"out{i}.json"),
           "--num_steps", str(num_steps)]
    procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True))
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=600)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0, 0], "\n\n".join(
      f"process {i} (exit {p.returncode}):\n{log[-2500:]}" for i, (p, log) in enumerate(zip(procs, logs)))
  outs = [json.load(open(tmp_path / f"out{i}.json")) for i in range(2)]
  assert [o["process_count"] for o in outs] == [2, 2] and outs[0]["devices"] == 4

  config = test_train.multiprocess_config(num_steps)
  single = train.train(config, str(tmp_path / "single"),
                       batches=(tiny_data.global_batch(s, config) for s in range(num_steps)))
  ref = [(s, m["loss"]) for s, m in single["history"]]
  got = [(s, m["loss"]) for s, m in outs[0]["history"]]
  assert [s for s, _ in got] == [s for s, _ in ref] == list(range(1, num_steps + 1))
  np.testing.assert_allclose([l for _, l in got], [l for _, l in ref], rtol=1e-5)
  for key in ref and single["history"][0][1]:
    if key.startswith(("loss", "top1", "grad_norm", "learning_rate")):
      np.testing.assert_allclose([m[key] for _, m in outs[0]["history"]],
                                 [m[key] for _, m in single["history"]], rtol=1e-4, err_msg=key)
  # Both processes saved one checkpoint together (orbax's multi-host path); its parameters match.
  multi_state = _restore(tmp_path / "mp", num_steps, config)
  single_state = _restore(tmp_path / "single", num_steps, config)
  test_train._assert_trees_close(single_state, multi_state, rtol=1e-4,  # pylint: disable=protected-access
                                 what="2 processes vs 1 process after 3 steps")
  # Process 0 wrote the step-0 model from its own copy of the replicated state: the same bytes as one process.
  initial = [(tmp_path / d / checkpoints.INITIAL_MODEL_FILE).read_bytes() for d in ("mp", "single")]
  assert initial[0] == initial[1]


@pytest.mark.multiprocess
@pytest.mark.slow
def test_sigterm_on_one_process_saves_on_all_at_the_same_step(tmp_path, env):
  """Preemption of one host: JAX's preemption sync service makes every process save the same step."""
  port = _free_port()
  procs = []
  for i in range(2):
    cmd = [sys.executable, "-m", "tests.mp_train_worker", "--port", str(port), "--num_processes", "2",
           "--process_id", str(i), "--workdir", str(tmp_path / "mp"), "--out", str(tmp_path / f"out{i}.json"),
           "--num_steps", "1000", "--sigterm_process", "1", "--sigterm_step", "3"]
    procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True))
  logs = []
  try:
    for p in procs:
      logs.append(p.communicate(timeout=600)[0])
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert [p.returncode for p in procs] == [0, 0], "\n\n".join(
      f"process {i} (exit {p.returncode}):\n{log[-2500:]}" for i, (p, log) in enumerate(zip(procs, logs)))
  outs = [json.load(open(tmp_path / f"out{i}.json")) for i in range(2)]
  assert [o["status"] for o in outs] == ["preempted", "preempted"]
  step = outs[0]["step"]
  assert outs[1]["step"] == step and 3 < step < 1000
  assert _finished_steps(tmp_path / "mp") == [step]
