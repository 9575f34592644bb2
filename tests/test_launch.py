"""Launchers and sweeps: dry-run command lines, override formatting, process groups, sweep expansion."""
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from configs.sweeps import dsl
from data_pipeline import tf_cpu
from launch import common, gpu, local, procs, sweep, tpu

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # Launchers pass inherited XLA flags on; start clean.


@pytest.fixture
def no_subprocess(monkeypatch):
  """A dry run must not start anything: any subprocess call fails the test."""
  def boom(*args, **kwargs):
    raise AssertionError(f"dry run started a process: {args[0] if args else kwargs}")
  monkeypatch.setattr(subprocess, "run", boom)
  monkeypatch.setattr(subprocess, "Popen", boom)


def _lines(capsys):
  return [l for l in capsys.readouterr().out.splitlines() if l.strip()]


# ---- overrides -----------------------------------------------------------------------------------

def test_override_flags_parse_back_through_ml_collections():
  """Every value type a sweep uses reaches the config with the right type and value."""
  from absl import flags
  from ml_collections import config_flags
  overrides = {"train.global_batch_size": 256, "optim.learning_rate": 3e-4, "augment.mix.enabled": False,
               "model.video.name": "", "model.video.blocks": (2, 1, 1, 1), "eval.tasks": ("keyword",),
               "loss.pairs.logmel_video": 0.0, "seed": 7}
  argv = ["prog", "--config=configs/default.py", *common.override_flags(overrides)]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)  # Override flags come from argv.
  fv(argv)
  c = fv.config
  assert c.train.global_batch_size == 256 and isinstance(c.train.global_batch_size, int)
  assert c.optim.learning_rate == 3e-4
  assert c.augment.mix.enabled is False
  assert c.model.video.name == ""
  assert tuple(c.model.video.blocks) == (2, 1, 1, 1)
  assert tuple(c.eval.tasks) == ("keyword",)
  assert c.loss.pairs.logmel_video == 0.0
  assert c.seed == 7


def test_parse_override_errors_name_the_input():
  assert common.parse_override("config.train.num_steps=5") == ("train.num_steps", "5")
  assert common.parse_override("model.video.name=") == ("model.video.name", "")
  with pytest.raises(ValueError, match="expected KEY=VALUE"):
    common.parse_override("train.num_steps")
  with pytest.raises(ValueError, match="not a dotted config path"):
    common.parse_override("train..num_steps=3")
  assert common.parse_overrides(["seed=1", "seed=2"]) == {"seed": "2"}


# ---- TPU -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,gcloud_type,workers,devices", [
    ("v4-8", "v4-8", 1, 4), ("v4-64", "v4-64", 8, 32), ("v5e-256", "v5litepod-256", 64, 256),
    ("v5litepod-8", "v5litepod-8", 1, 8), ("v5litepod-16", "v5litepod-16", 4, 16), ("v5p-128", "v5p-128", 16, 64),
    ("v6e-64", "v6e-64", 16, 64), ("v3-32", "v3-32", 4, 32)])
def test_accelerator_workers(name, gcloud_type, workers, devices):
  a = tpu.parse_accelerator(name)
  assert (a.gcloud_type, a.workers, a.devices) == (gcloud_type, workers, devices)


@pytest.mark.parametrize("bad", ["v4-4", "v4-48", "v7-8", "tpu-64", "v4"])
def test_accelerator_rejects(bad):
  with pytest.raises(ValueError, match="accelerator-type"):
    tpu.parse_accelerator(bad)


def test_tpu_up_dry_run_queued_spot(capsys, no_subprocess):
  tpu.main(["up", "--name", "avcl-pod", "--zone", "us-central2-b", "--accelerator-type", "v4-64", "--queued",
            "--spot", "--project", "my-proj", "--config", "configs/default.py",
            "--workdir", "gs://bucket/avcl/run1", "--override", "train.global_batch_size=4096",
            "--override", "model.video.name=", "--env", "TF_CPP_MIN_LOG_LEVEL=2", "--dry-run"])
  lines = _lines(capsys)
  cmds = [shlex.split(l) for l in lines if not l.startswith("#")]
  assert "# v4-64: 8 worker(s), 32 devices, runtime tpu-ubuntu2204-base, spot, queued" in lines
  create = cmds[0]
  assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
  assert {"avcl-pod", "--node-id=avcl-pod", "--zone=us-central2-b", "--project=my-proj",
          "--accelerator-type=v4-64", "--runtime-version=tpu-ubuntu2204-base", "--spot"} <= set(create)
  assert cmds[1][:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]
  scp, setup, run = cmds[2], cmds[3], cmds[4]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert scp[6] == "avcl-pod:avcl-code.tgz"
  assert setup[4] == "ssh" and "--worker=all" in setup and "--zone=us-central2-b" in setup
  setup_cmd = next(a for a in setup if a.startswith("--command="))
  assert "pip install -q -e . 'jax[tpu]>=0.10,<0.11'" in setup_cmd
  run_cmd = shlex.split(next(a for a in run if a.startswith("--command="))[len("--command="):])
  assert "--worker=all" in run
  i = run_cmd.index("-m")
  assert run_cmd[i - 3:i + 1] == ["env", "TF_CPP_MIN_LOG_LEVEL=2", "python3", "-m"]
  assert run_cmd[i + 1:i + 9] == [
      "avcl.main", "--config=configs/default.py", "--workdir=gs://bucket/avcl/run1", "--mode=train_and_eval",
      "--distributed=auto", "--config.train.global_batch_size=4096", "--config.model.video.name=", ">"]
  assert "nohup" in run_cmd
  assert len(cmds) == 5


def test_tpu_create_on_demand_v5e_and_delete(capsys, no_subprocess):
  tpu.main(["create", "--name", "n", "--zone", "us-west4-a", "--accelerator-type", "v5e-256", "--dry-run"])
  tpu.main(["delete", "--name", "n", "--zone", "us-west4-a", "--dry-run"])
  tpu.main(["delete", "--name", "n", "--zone", "us-west4-a", "--queued", "--dry-run"])
  cmds = [shlex.split(l) for l in _lines(capsys) if not l.startswith("#")]
  assert cmds[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "n", "--zone=us-west4-a",
                     "--accelerator-type=v5litepod-256", "--version=v2-alpha-tpuv5-lite"]
  assert cmds[1] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "n", "--zone=us-west4-a", "--quiet"]
  assert cmds[2] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "n", "--zone=us-west4-a",
                     "--force", "--quiet"]


def test_tpu_logs_one_fetch_per_worker(capsys, no_subprocess):
  tpu.main(["logs", "--name", "n", "--zone", "z", "--accelerator-type", "v4-32", "--out", "L", "--dry-run"])
  cmds = [shlex.split(l) for l in _lines(capsys)]
  assert len(cmds) == 4
  for w, c in enumerate(cmds):
    assert c[5:7] == ["n:avcl-run.log", f"L/worker-{w}.log"] and f"--worker={w}" in c
  tpu.main(["logs", "--name", "n", "--zone", "z", "--follow", "--dry-run"])
  follow = shlex.split(_lines(capsys)[0])
  assert "--worker=0" in follow and "--command=tail -n 100 -F $HOME/avcl-run.log" in follow


def test_tpu_pod_needs_gs_workdir(capsys, no_subprocess):
  with pytest.raises(SystemExit):
    tpu.main(["run", "--name", "n", "--zone", "z", "--accelerator-type", "v4-16", "--config",
              "configs/default.py", "--workdir", "/tmp/w", "--dry-run"])
  assert "needs a shared gs:// workdir" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    tpu.main(["run", "--name", "n", "--zone", "z", "--accelerator-type", "v4-16", "--config",
              "configs/nope.py", "--workdir", "gs://b/w", "--dry-run"])
  assert "no such file" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    tpu.main(["run", "--name", "n", "--zone", "z", "--accelerator-type", "v4-64", "--config",
              "configs/default.py", "--workdir", "gs://b/w", "--override", "train.global_batch_size=100",
              "--dry-run"])
  assert "multiple of the 32 devices of a v4-64" in capsys.readouterr().err


def _fake_python(tmp_path, body):
  bindir = tmp_path / "bin"
  bindir.mkdir(exist_ok=True)
  exe = bindir / "python3"
  exe.write_text("#!/bin/sh\n" + body)
  exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
  home = tmp_path / "home"
  (home / "avcl").mkdir(parents=True, exist_ok=True)
  env = {"HOME": str(home), "PATH": f"{bindir}:/usr/bin:/bin"}
  return home, env


def _remote_command(argv, **kw):
  """The --command string `launch.tpu` would send to the workers for this invocation."""
  a = tpu.build_parser().parse_args(argv)
  runner = common.Runner(dry_run=True, out=open(os.devnull, "w"))
  t = tpu.Tpu(a, runner)
  getattr(t, a.step)(**kw)
  return [c for c in runner.commands if c[4] == "ssh"][-1][-1][len("--command="):]


RUN_ARGS = ["run", "--name", "n", "--zone", "z", "--accelerator-type", "v4-8", "--config", "configs/default.py",
            "--workdir", "gs://b/w", "--override", "seed=3"]


def test_tpu_remote_run_command_in_a_shell(tmp_path):
  """The worker-side shell line really starts the run detached, records its pid and (waiting) its status."""
  home, env = _fake_python(tmp_path, 'echo "fake python $@"\nexit 3\n')
  cmd = _remote_command(RUN_ARGS, wait=True)
  r = subprocess.run(["bash", "-c", cmd], env=env, timeout=30, capture_output=True, text=True)
  assert r.returncode == 3
  assert tpu.combine_statuses(r.stdout, workers=1) == 3  # The status line the sweep reads.
  log = (home / "avcl-run.log").read_text()
  assert "fake python -m avcl.main --config=configs/default.py --workdir=gs://b/w" in log
  assert "--config.seed=3" in log
  assert (home / "avcl-run.pid").read_text().strip().isdigit()


def test_tpu_remote_run_detaches_and_stop_kills_it(tmp_path):
  home, env = _fake_python(tmp_path, "exec sleep 60\n")
  start = time.monotonic()
  subprocess.run(["bash", "-c", _remote_command(RUN_ARGS)], env=env, timeout=30, check=True)
  assert time.monotonic() - start < 10  # ssh returns at once; the run goes on.
  pid = int((home / "avcl-run.pid").read_text())
  os.kill(pid, 0)  # Alive.
  stop = _remote_command(["stop", "--name", "n", "--zone", "z"])
  subprocess.run(["bash", "-c", stop], env=env, timeout=30, check=True)
  for _ in range(100):
    try:
      os.kill(pid, 0)
    except ProcessLookupError:
      break
    time.sleep(0.05)
  else:
    os.kill(pid, 9)
    pytest.fail("stop left the run alive")
  assert not (home / "avcl-run.pid").exists()


def test_tpu_pack_holds_the_code_not_the_clutter(tmp_path, monkeypatch):
  monkeypatch.setattr(tpu.tempfile, "gettempdir", lambda: str(tmp_path))
  a = tpu.build_parser().parse_args(["setup", "--name", "pk", "--zone", "z"])
  path = tpu.Tpu(a, common.Runner(dry_run=False)).pack()
  import tarfile
  with tarfile.open(path) as tar:
    names = set(tar.getnames())
  assert {"launch/tpu.py", "setup.py", "configs/default.py"} <= names
  assert not any(n.startswith((".venv", ".git/")) or "__pycache__" in n for n in names)


# ---- GPU -----------------------------------------------------------------------------------------

def _leading_env(argv):
  """The NAME=VALUE assignments that start a printed command line."""
  env = {}
  for token in argv:
    name, eq, value = token.partition("=")
    if not eq or not name.isidentifier() or not name.isupper():
      break
    env[name] = value
  return env


def test_gpu_dry_run_process_per_gpu(capsys, no_subprocess):
  gpu.main(["--gpus", "0,1", "--process-per-gpu", "--config", "configs/default.py", "--workdir", "/tmp/gw",
            "--override", "train.global_batch_size=512", "--port", "12345", "--dry-run"])
  lines = _lines(capsys)
  runs = [shlex.split(l) for l in lines if "avcl.main" in l]
  assert len(runs) == 2
  for i, r in enumerate(runs):
    env = _leading_env(r)
    assert env["JAX_COMPILATION_CACHE_DIR"] == os.path.expanduser(gpu.DEFAULT_COMPILATION_CACHE)
    assert env["JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES"] == "all"  # Autotuning results and kernels too.
    assert env["CUDA_VISIBLE_DEVICES"] == str(i)
    assert env["JAX_PLATFORMS"] == "cuda"
    assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.90"
    assert env["XLA_FLAGS"] == "--xla_gpu_enable_latency_hiding_scheduler=true"
    assert "--coordinator_address=127.0.0.1:12345" in r and "--num_processes=2" in r
    assert f"--process_id={i}" in r and "--distributed=on" in r
    assert "--workdir=/tmp/gw" in r and "--config.train.global_batch_size=512" in r
    assert r[-4:] == [">", f"/tmp/gw/logs/process_{i}.log", "2>&1", "&"]


def test_gpu_dry_run_one_process_all_gpus(capsys, no_subprocess):
  gpu.main(["--num-gpus", "4", "--config", "configs/default.py", "--workdir", "/tmp/gw", "--mem-fraction",
            "0.8", "--command-buffers", "off", "--deterministic", "--compilation-cache", "", "--dry-run"])
  runs = [shlex.split(l) for l in _lines(capsys) if "avcl.main" in l]
  assert len(runs) == 1
  env = _leading_env(runs[0])
  assert "JAX_COMPILATION_CACHE_DIR" not in env  # --compilation-cache "" turns it off.
  assert "JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES" not in env
  assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
  assert env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.80"
  assert env["XLA_FLAGS"].split() == ["--xla_gpu_enable_latency_hiding_scheduler=true",
                                      "--xla_gpu_enable_command_buffer=", "--xla_gpu_deterministic_ops=true"]
  assert "--distributed=off" in runs[0]


def test_gpu_bad_arguments():
  with pytest.raises(ValueError, match="command-buffers"):
    gpu.xla_flags(num_gpus=1, command_buffers="FUSION,GRAPHS")
  with pytest.raises(ValueError, match="mem-fraction"):
    gpu.gpu_env(visible=[0], flags=[], mem_fraction=1.5, preallocate=True, platform="cuda")
  with pytest.raises(ValueError, match="listed twice"):
    gpu.parse_gpus("0,0", None)
  with pytest.raises(ValueError, match="no GPU found"):
    gpu.parse_gpus(None, None, detect=lambda: 0)
  assert gpu.parse_gpus(None, None, detect=lambda: 2) == [0, 1]


def _jax_accepts(xla_flags):
  env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
  code = "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"
  return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_gpu_xla_flags_accepted_by_installed_jaxlib():
  """XLA aborts on unknown flags (and bad values) even on CPU, so the installed jaxlib checks our flags."""
  flags = (gpu.xla_flags(num_gpus=8, command_buffers="off", deterministic=True)
           + gpu.xla_flags(num_gpus=8, command_buffers="FUSION,CUBLAS,CUDNN,CUSTOM_CALL")
           + ["--xla_gpu_enable_triton_gemm=false", "--xla_gpu_autotune_level=1"])  # gpu_check.sh's flags.
  r = _jax_accepts(" ".join(flags))
  assert r.returncode == 0 and r.stdout.strip() == "3.0", r.stderr[-2000:]
  bad = _jax_accepts("--xla_gpu_enable_command_buffer=NOT_A_TYPE")  # The check can fail.
  assert bad.returncode != 0


def test_compilation_cache_env_is_honoured_by_installed_jax(tmp_path):
  """The launcher's JAX_COMPILATION_CACHE_DIR makes the installed jax write compiled programs there."""
  env = {**gpu.gpu_env(visible=[], flags=[], mem_fraction=0.9, preallocate=True, platform="cpu",
                       compilation_cache=str(tmp_path / "cache")),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  code = "import jax, jax.numpy as jnp; print(float(jax.jit(lambda x: (x @ x.T).sum())(jnp.ones((8, 8)))))"
  r = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                     timeout=120)
  assert r.returncode == 0 and r.stdout.strip() == "512.0", r.stderr[-2000:]
  assert any(n.startswith("jit_") for n in os.listdir(tmp_path / "cache"))


# ---- local multi-process (command lines only; the real run is further down) -------------------------

def test_local_dry_run(capsys, no_subprocess):
  local.main(["--num-processes", "3", "--devices-per-process", "4", "--config", "configs/default.py",
              "--workdir", "/tmp/lw", "--override", "train.num_steps=10", "--port", "23456", "--dry-run"])
  runs = [shlex.split(l) for l in _lines(capsys) if "avcl.main" in l]
  assert len(runs) == 3
  for i, r in enumerate(runs):
    env = dict(x.split("=", 1) for x in r[:3])
    assert env == {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
                   "CUDA_VISIBLE_DEVICES": ""}
    assert {"--coordinator_address=127.0.0.1:23456", "--num_processes=3", f"--process_id={i}",
            "--config.train.num_steps=10"} <= set(r)


def test_local_keeps_other_xla_flags():
  assert local.cpu_xla_flags(2, "--xla_force_host_platform_device_count=8 --xla_dump_to=/tmp/d") == (
      "--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=2")
  with pytest.raises(ValueError, match="log-dir"):
    local.default_log_dir("gs://b/w")


# ---- process group -------------------------------------------------------------------------------

def _py(code):
  return [sys.executable, "-c", code]


def test_group_failure_stops_the_others(tmp_path):
  members = [procs.Member(_py("import time; time.sleep(60)"), {}, str(tmp_path / "a.log")),
             procs.Member(_py("import sys, time; time.sleep(0.5); print('bye'); sys.exit(3)"), {},
                          str(tmp_path / "b.log"))]
  start = time.monotonic()
  assert procs.run_group(members, grace_s=5) == 3
  assert time.monotonic() - start < 15
  assert "bye" in (tmp_path / "b.log").read_text()


def test_group_success_signal_and_timeout(tmp_path):
  ok = [procs.Member(_py("import os; print(os.environ['X'])"), {"X": str(i)}, str(tmp_path / f"{i}.log"))
        for i in range(2)]
  assert procs.run_group(ok) == 0
  assert [(tmp_path / f"{i}.log").read_text().strip() for i in range(2)] == ["0", "1"]
  killed = [procs.Member(_py("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"), {},
                         str(tmp_path / "k.log"))]
  assert procs.run_group(killed) == 128 + 9
  slow = [procs.Member(_py("import time; time.sleep(60)"), {}, str(tmp_path / "s.log"))]
  assert procs.run_group(slow, timeout_s=0.5, grace_s=5) == 124


def test_group_preempted_is_not_a_failure(tmp_path):
  """A member that exits PREEMPTED (75) leaves the others to finish their save; the group reports 75."""
  members = [procs.Member(_py(f"import sys; sys.exit({common.PREEMPTED})"), {}, str(tmp_path / "a.log")),
             procs.Member(_py(f"import sys, time; time.sleep(1.5); print('saved'); sys.exit({common.PREEMPTED})"),
                          {}, str(tmp_path / "b.log"))]
  assert procs.run_group(members, grace_s=0.1) == common.PREEMPTED == 75
  assert "saved" in (tmp_path / "b.log").read_text()  # Not stopped when the first one exited.
  mixed = [procs.Member(_py(f"import sys; sys.exit({common.PREEMPTED})"), {}, str(tmp_path / "c.log")),
           procs.Member(_py("import sys, time; time.sleep(0.5); sys.exit(3)"), {}, str(tmp_path / "d.log"))]
  assert procs.run_group(mixed) == 3  # A real failure still wins.


def test_tpu_statuses_combine_over_workers():
  out = "w0: avcl-exit-status 0\nw1: avcl-exit-status 75\n"
  assert tpu.combine_statuses(out, workers=2) == common.PREEMPTED
  assert tpu.combine_statuses("avcl-exit-status 0\n" * 2, workers=2) == 0
  assert tpu.combine_statuses("avcl-exit-status 75\navcl-exit-status 1\n", workers=2) == 1
  assert tpu.combine_statuses("avcl-exit-status 0\n", workers=2) == 1  # A worker never reported.


def test_sweep_stops_at_a_preempted_run_and_exits_75(tmp_path, monkeypatch, capsys):
  """A preempted run is recorded as preempted (not failed, not done); the sweep exits 75 so a wrapper reruns it."""
  fake = tmp_path / "fakepy"
  fake.write_text(f"#!/bin/sh\nexit {common.PREEMPTED}\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  monkeypatch.setattr(sys, "executable", str(fake))
  root = tmp_path / "sw"
  assert sweep.main(["--config", "configs/sweeps/tiny.py", "--workdir-root", str(root)]) == common.PREEMPTED
  out = capsys.readouterr().out
  assert "PREEMPTED (checkpoint saved; rerun the sweep to resume it)" in out and "2/2" not in out
  summary = json.loads((root / "summary.json").read_text())
  assert summary["preempted"] == [summary["runs"][0]["name"]] and summary["failed"] == []
  assert [r["status"] for r in summary["runs"]] == ["preempted", "missing"]


# ---- sweeps --------------------------------------------------------------------------------------

def test_product_and_zip():
  grid = dsl.product(dsl.axis("a", [1, 2]), dsl.axis("b", ["x", "y", "z"]))
  assert grid == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 1, "b": "z"},
                  {"a": 2, "b": "x"}, {"a": 2, "b": "y"}, {"a": 2, "b": "z"}]
  pairs = dsl.zip(dsl.axis("a", [1, 2]), dsl.axis("b", [3, 4]))
  assert pairs == [{"a": 1, "b": 3}, {"a": 2, "b": 4}]
  assert dsl.product(pairs, dsl.axis("seed", [0, 1]))[3] == {"a": 2, "b": 4, "seed": 1}
  assert dsl.product() == [{}]
  with pytest.raises(ValueError, match="different lengths"):
    dsl.zip(dsl.axis("a", [1, 2]), dsl.axis("b", [3]))
  with pytest.raises(ValueError, match="set by two axes"):
    dsl.product(dsl.axis("a", [1]), dsl.axis("a", [2]))
  with pytest.raises(ValueError, match="no values"):
    dsl.axis("a", [])


def test_run_names_distinct_and_readable():
  runs = dsl.product(dsl.axis("data.frame_size", [16, 112]),
                             dsl.axis("augment.mix.enabled", [False, True]),
                             dsl.axis("model.video.name", ["tsm_resnet", ""]),
                             dsl.axis("optim.learning_rate", [1e-3, 1.0001e-3]))
  names = dsl.run_names(runs)
  assert len(set(names)) == len(runs) == 16
  assert names[0] == "data.frame_size=16,mix.enabled=false,video.name=tsm_resnet,optim.learning_rate=0.001"
  assert "video.name=none" in names[2]
  assert all("/" not in n and " " not in n for n in names)
  # Two keys with the same tail keep their full path.
  clash = dsl.run_names([{"model.a.x.width": 1, "model.b.x.width": 2}])
  assert clash == ["model.a.x.width=1,model.b.x.width=2"]
  # Values that print alike stay apart; identical runs are an error.
  assert len(set(dsl.run_names([{"k": "a b"}, {"k": "a_b"}]))) == 2
  with pytest.raises(ValueError, match="same overrides"):
    dsl.run_names([{"k": 1}, {"k": 1}])


SWEEPS = ["tiny", "av_vs_audio", "av_vs_audio_default", "resolution", "mixing_batch"]


@pytest.mark.parametrize("name", SWEEPS)
def test_shipped_sweeps_override_real_fields(name):
  """Every swept key exists in the sweep's own config with a compatible type, so no run dies on a typo."""
  import importlib
  module = importlib.import_module(f"configs.sweeps.{name}")
  config = module.get_config()
  runs = sweep.load_sweep(os.path.join("configs", "sweeps", f"{name}.py"))
  assert len(set(dsl.run_names(runs))) == len(runs)
  for run in runs:
    for key, value in run.items():
      node = config
      for part in key.split("."):
        assert part in node, f"{name}: {key} is not a config field"
        node = node[part]
      assert isinstance(value, type(node)) or (isinstance(node, float) and isinstance(value, int)), (
          f"{name}: {key}={value!r} but the field holds {node!r}")
    # And the trainer's own validation accepts the run's config.
    from avcl import config_validation
    run_config = module.get_config()
    for key, value in run.items():
      *parents, leaf = key.split(".")
      node = run_config
      for part in parents:
        node = node[part]
      node[leaf] = value
    config_validation.validate_config(run_config)
  if name != "tiny":
    seeds = {run["seed"] for run in runs}
    assert len(seeds) >= 3
    points = {json.dumps({k: v for k, v in r.items() if k != "seed"}, sort_keys=True) for r in runs}
    assert len(runs) == len(points) * len(seeds)  # Every point at every seed.


@pytest.mark.parametrize("name", ["av_vs_audio", "av_vs_audio_default"])
def test_av_vs_audio_changes_the_pair_only(name):
  runs = sweep.load_sweep(f"configs/sweeps/{name}.py")
  av = [r for r in runs if r["loss.pairs.logmel_video"] == 1.0]
  ao = [r for r in runs if r["loss.pairs.logmel_video"] == 0.0]
  assert len(av) == len(ao) == 3
  assert all(r["loss.pairs.logmel_logmel2"] == 1.0 and r["model.video.name"] == "" for r in ao)
  assert all(r["loss.pairs.logmel_logmel2"] == 0.0 and r["model.video.name"] == "tsm_resnet" for r in av)


def test_av_vs_audio_default_is_the_default_run_but_for_baselines():
  """Its audio-visual arm at seed s is `configs/default.py --config.seed=s` (the README's run) in every field
  that training reads; only the evaluation's baselines differ."""
  from configs import default
  from configs.sweeps import av_vs_audio_default
  base, ours = default.get_config().to_dict(), av_vs_audio_default.get_config().to_dict()
  assert ours["eval"].pop("baselines") == ("logmel",)
  base["eval"].pop("baselines")
  assert ours == base


def test_sweep_dry_run_lists_distinct_workdirs(capsys, no_subprocess, tmp_path):
  sweep.main(["--config", "configs/sweeps/resolution.py", "--workdir-root", str(tmp_path / "r"),
              "--override", "train.log_every=10", "--dry-run"])
  lines = _lines(capsys)
  workdirs = [next(a for a in shlex.split(l) if a.startswith("--workdir=")) for l in lines if "avcl.main" in l]
  assert len(workdirs) == len(set(workdirs)) == 12
  assert all(w.startswith(f"--workdir={tmp_path}/r/data.frame_size=") for w in workdirs)
  assert all("--config.train.log_every=10" in l for l in lines if "avcl.main" in l)
  with pytest.raises(SystemExit):
    sweep.main(["--config", "configs/sweeps/tiny.py", "--override", "augment.mix.enabled=True", "--dry-run"])
  assert "swept by" in capsys.readouterr().err


def test_sweep_dry_run_tpu_backend(capsys, no_subprocess):
  sweep.main(["--config", "configs/sweeps/tiny.py", "--backend", "tpu", "--name", "n", "--zone", "z",
              "--accelerator-type", "v4-16", "--workdir-root", "gs://b/sw", "--dry-run"])
  ssh = [shlex.split(l) for l in _lines(capsys) if "tpu-vm ssh" in l]
  assert len(ssh) == 2
  for c, mix in zip(ssh, ["False", "True"]):
    remote = c[-1]
    assert "--worker=all" in c
    assert f"--workdir=gs://b/sw/mix.enabled={mix.lower()}" in remote
    assert f"--config.augment.mix.enabled={mix}" in remote and "wait $pid" in remote


def _results(workdir, scores, step=4):
  os.makedirs(os.path.join(workdir, "eval"), exist_ok=True)
  tasks = {t: {"metric": "accuracy", "n_train": 10, "n_test": 5, "scores": {"pretrained": s, "logmel": 0.1}}
           for t, s in scores.items()}
  with open(os.path.join(workdir, "eval", "results.json"), "w") as f:
    json.dump({"tasks": tasks, "checkpoint_step": step}, f)


def test_summary_means_and_spreads_over_seeds(tmp_path):
  runs = dsl.product(dsl.axis("train.global_batch_size", [32, 64]),
                             dsl.axis("seed", [0, 1, 2]))
  names = dsl.run_names(runs)
  rng = np.random.default_rng(0)
  scores = rng.uniform(size=(6, 2))
  for name, s in zip(names[:5], scores):  # The last run has no results yet.
    _results(tmp_path / name, {"keyword": s[0], "speaker": s[1]})
  summary = sweep.summarise(runs, names, str(tmp_path))
  assert summary["tasks"] == ["keyword", "speaker"]
  assert [r["status"] for r in summary["runs"]] == ["done"] * 5 + ["missing"]
  g32, g64 = summary["grouped"]
  assert g32["overrides"] == {"train.global_batch_size": 32} and g32["seeds"] == [0, 1, 2]
  np.testing.assert_allclose(g32["mean"]["keyword"], scores[:3, 0].mean())
  np.testing.assert_allclose(g32["std"]["keyword"], scores[:3, 0].std(ddof=1))
  np.testing.assert_allclose(g64["mean"]["speaker"], scores[3:5, 1].mean())
  np.testing.assert_allclose(g64["std"]["speaker"], scores[3:5, 1].std(ddof=1))
  table = sweep.format_table(summary)
  assert f"{scores[:3, 0].mean():.3f} ± {scores[:3, 0].std(ddof=1):.3f}" in table


def test_summary_reference_rows_and_plots(tmp_path):
  from PIL import Image

  from launch import study_plots
  runs = dsl.product(dsl.axis("augment.mix.enabled", [False, True]),
                             dsl.axis("train.global_batch_size", [32, 128]), dsl.axis("seed", [0, 1]))
  names = dsl.run_names(runs)
  for i, name in enumerate(names):
    _results(tmp_path / name, {"keyword": 0.2 + 0.01 * i, "speaker": 0.5})
  summary = sweep.summarise(runs, names, str(tmp_path))
  assert summary["reference"]["logmel"] == pytest.approx({"keyword": 0.1, "speaker": 0.1})
  assert "| logmel | 0.100 | 0.100 |" in sweep.format_table(summary)
  spec = {"file": "p.png", "x": "train.global_batch_size", "series": "augment.mix.enabled", "log_x": True}
  study_plots.check_spec(spec, sorted(runs[0]))
  study_plots.plot(summary, spec, str(tmp_path / "p.png"))
  with Image.open(tmp_path / "p.png") as im:
    assert im.format == "PNG" and im.size[0] > 400
  with pytest.raises(ValueError, match="frame_size.*not a swept key"):
    study_plots.check_spec({"file": "q.png", "x": "data.frame_size"}, sorted(runs[0]))
  with pytest.raises(ValueError, match="unknown fields"):
    study_plots.check_spec({"file": "q.png", "x": "seed", "colour": "red"}, ["seed"])


@pytest.mark.parametrize("name", ["av_vs_audio", "av_vs_audio_default", "resolution", "mixing_batch"])
def test_study_sweeps_declare_valid_plots(name):
  path = os.path.join("configs", "sweeps", f"{name}.py")
  assert sweep.load_plots(path, sweep.load_sweep(path))


def test_summary_reads_throughput_from_tensorboard(tmp_path):
  tf = tf_cpu.import_tf()
  runs = [{"seed": 0}, {"seed": 1}]
  names = dsl.run_names(runs)
  for name, speeds in zip(names, [[10.0, 20.0], [30.0]]):
    _results(tmp_path / name, {"keyword": 0.5})
    writer = tf.summary.create_file_writer(str(tmp_path / name))
    with writer.as_default():
      tf.summary.scalar("loss", 1.0, step=1)
      for step, v in enumerate(speeds, start=2):
        tf.summary.scalar("clips_per_s", v, step=step)
    writer.close()
  summary = sweep.summarise(runs, names, str(tmp_path))
  assert [r["clips_per_s"] for r in summary["runs"]] == [15.0, 30.0]
  assert summary["grouped"][0]["clips_per_s"] == 22.5
  assert "| seed=0 | done | 4 | - | 15.0 | 0.500 |" in sweep.format_table(summary)


def test_group_passes_on_the_launchers_sigterm(tmp_path):
  """Killing the launcher (SIGTERM, as a scheduler does) stops every process it started."""
  code = (f"import sys; from launch import procs; "
          f"m = [procs.Member([sys.executable, '-c', 'import time; time.sleep(60)'], {{}}, "
          f"r'{tmp_path}/p%d.log' % i) for i in range(2)]; sys.exit(procs.run_group(m, grace_s=5))")
  launcher = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, text=True)
  pids = []
  for line in launcher.stderr:
    if "pid" in line:
      pids.append(int(line.split(" pid ")[1].split()[0]))
    if len(pids) == 2:
      break
  launcher.send_signal(15)
  assert launcher.wait(timeout=30) == 128 + 15
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def _doc_commands():
  """Every `python -m launch.*` command in docs/launch.md, continuation lines joined."""
  text = open(os.path.join(REPO, "docs", "launch.md")).read().replace("\\\n", " ")
  return [shlex.split(l.strip(), comments=True) for l in text.splitlines()
          if l.strip().startswith("python -m launch.")]


def test_docs_commands_dry_run(monkeypatch, capsys, no_subprocess):
  """The launch commands the docs show parse and dry-run (no gcloud, no GPU needed)."""
  monkeypatch.setattr(gpu, "detect_gpus", lambda: 4)
  modules = {"launch.tpu": tpu, "launch.gpu": gpu, "launch.local": local, "launch.sweep": sweep}
  commands = _doc_commands()
  assert {c[2] for c in commands} == set(modules)
  ran = 0
  for c in commands:
    if "--summary-only" in c:  # Reads results, nothing to dry-run.
      continue
    args = c[3:] + ([] if "--dry-run" in c else ["--dry-run"])
    assert modules[c[2]].main(args) in (0, None), c
    ran += 1
  out = capsys.readouterr().out
  assert ran >= 10 and "queued-resources create avcl-v4" in out and "--accelerator-type=v4-128" in out


# ---- the real thing: several processes training (slow) --------------------------------------------------

TINY = "configs/sweeps/tiny.py"


@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
  """A persistent compilation cache for the single-process runs of the slow tests.

  Not for multi-process runs: JAX writes cache entries from process 0 only, so on a rerun one process
  may load the step while the other compiles it, and gloo gives up (after a fixed 30 s) waiting at the
  step's first collective (seen here: "Gloo context initialization failed: DEADLINE_EXCEEDED").
  """
  return str(tmp_path_factory.mktemp("jax_cache"))


def _cpu_env(cache_dir=None):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # Each launcher sets its own device count.
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  if cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=cache_dir, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  return env


def _run_driver(workdir, losses_out, *, num_processes, devices_per_process, overrides, timeout=900):
  """The local launcher's process group, running tests.multiprocess_driver (fixed global batches)."""
  members = local.build_members(
      num_processes=num_processes, devices_per_process=devices_per_process, config=TINY, workdir=workdir,
      mode="train", overrides=overrides, log_dir=os.path.join(losses_out + "-logs"), port=common.free_port(),
      module="tests.multiprocess_driver")
  for m in members:
    m.argv.append(f"--losses_out={losses_out}")
  status = procs.run_group(members, timeout_s=timeout)
  logs = "\n".join(open(m.log_path).read()[-3000:] for m in members)
  assert status == 0, logs
  return [json.load(open(f"{losses_out}.p{i}.json")) for i in range(num_processes)]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_match_one_and_resume_on_the_same_step(tmp_path, monkeypatch):
  """2 processes x 2 devices vs 1 process x 4 devices, on identical global batches: the same losses; and a
  2-process run resumed from the step-2 checkpoint of an uninterrupted 2-process run (each process reports
  the step it resumed at) gives that run's later losses exactly."""
  for k, v in _cpu_env().items():
    monkeypatch.setenv(k, v)
  overrides = {"train.global_batch_size": 8, "train.checkpoint_every": 2, "train.log_every": 1,
               "train.num_steps": 4}
  two, straight, one = str(tmp_path / "two"), str(tmp_path / "straight"), str(tmp_path / "one")
  uninterrupted = _run_driver(straight, str(tmp_path / "s"), num_processes=2, devices_per_process=2,
                              overrides=overrides)
  # The run as it stood after step 2: its workdir without the step-4 checkpoint. (A third 2-process run that
  # stops at step 2 would leave the same; copying saves its ~30 s.)
  shutil.copytree(straight, two)
  shutil.rmtree(os.path.join(two, "checkpoints", "4"))
  resumed = _run_driver(two, str(tmp_path / "b"), num_processes=2, devices_per_process=2, overrides=overrides)
  single = _run_driver(one, str(tmp_path / "c"), num_processes=1, devices_per_process=4, overrides=overrides)
  assert [r["start_step"] for r in uninterrupted] == [0, 0]
  assert [r["start_step"] for r in resumed] == [2, 2]  # Both processes agree on the step to resume.
  assert all(r["process_count"] == 2 and r["device_count"] == 4 for r in resumed + uninterrupted)
  assert single[0]["process_count"] == 1 and single[0]["device_count"] == 4
  for runs in (resumed, uninterrupted):  # Every process computes the same global loss.
    assert runs[0]["losses"] == runs[1]["losses"]
  two_losses = uninterrupted[0]["losses"]
  assert [s for s, _ in two_losses] == [1, 2, 3, 4] == [s for s, _ in single[0]["losses"]]
  assert [s for s, _ in resumed[0]["losses"]] == [3, 4]
  # The resume is exact: same mesh, same programs, restored state and data stream, so the same bits.
  assert resumed[0]["losses"] == two_losses[2:]
  # Two processes vs one: step 1 (the forward pass: data, mixing partners, encoders, loss) agrees to
  # float32 rounding, step 2 (one update) nearly so. Later steps are not compared: the two layouts'
  # rounding differences (summation orders of cross-process reductions) go through Adam, whose first
  # updates are about lr * sign(g), so a gradient component near 0 whose sign rounds differently moves
  # by a full step. Measured on 02dddad: 2.1e-5 relative at step 2 on one machine and 4e-7 at step 2 but
  # 9e-4 at step 3 (1.9e-3 at step 4) on another, while another partner map or batch moves step 1 by ~1e-2.
  np.testing.assert_allclose(two_losses[0][1], single[0]["losses"][0][1], rtol=2e-6)
  np.testing.assert_allclose(two_losses[1][1], single[0]["losses"][1][1], rtol=1e-4)
  assert sorted(os.listdir(os.path.join(two, "checkpoints")), key=int)[-1] == "4"


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
  """A 16-clip embedded world (about 15 s to render on one core), shared by the slow tests."""
  from data_pipeline.world import generator
  root = str(tmp_path_factory.mktemp("world"))
  generator.generate(root, clips=16, seed=0, workers=1, progress=False)
  return root


def _world_args(world):
  return ["--override", f"data.root={world}", "--override", "data.generate_if_missing=False"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_local_launcher_killed_then_resumed(tiny_world, tmp_path):
  """`launch.local` with 2 processes on the real data path: one process is killed (SIGKILL, as a host dies);
  the launcher stops the other and fails; the same command resumes from the newest checkpoint and finishes."""
  workdir = tmp_path / "w"
  ckpt = workdir / "checkpoints"
  args = [sys.executable, "-m", "launch.local", "--num-processes", "2", "--devices-per-process", "2",
          "--config", TINY, "--workdir", str(workdir), "--mode", "train", *_world_args(tiny_world),
          "--override", "train.global_batch_size=8", "--override", "train.checkpoint_every=2",
          "--override", "train.log_every=1"]
  launcher = subprocess.Popen([*args, "--override", "train.num_steps=100000", "--log-dir", str(tmp_path / "l1")],
                              env=_cpu_env(), cwd=REPO, stderr=subprocess.PIPE, text=True)
  try:
    pids = {}
    while len(pids) < 2:
      line = launcher.stderr.readline()
      assert line, "launcher ended before starting its processes"
      if " pid " in line:
        pids[int(line.split("process ")[1].split()[0])] = int(line.split(" pid ")[1].split()[0])
    deadline = time.monotonic() + 900
    while not (ckpt / "2").is_dir():  # Orbax renames a checkpoint to its step once it is complete.
      assert launcher.poll() is None, (tmp_path / "l1" / "process_0.log").read_text()[-3000:]
      assert time.monotonic() < deadline, "no checkpoint within 900 s"
      time.sleep(0.5)
    os.kill(pids[1], 9)
    rest = launcher.stderr.read()
    assert launcher.wait(timeout=120) == 128 + 9
  finally:
    if launcher.poll() is None:
      launcher.kill()
  assert "process 1 exited with status 137" in rest and "stopping the others" in rest
  with pytest.raises(ProcessLookupError):
    os.kill(pids[0], 0)  # The surviving process was stopped (and reaped) by the launcher.

  k = max(int(d) for d in os.listdir(ckpt) if d.isdigit())
  r = subprocess.run([*args, "--override", f"train.num_steps={k + 2}", "--log-dir", str(tmp_path / "l2")],
                     env=_cpu_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
  log0 = (tmp_path / "l2" / "process_0.log").read_text()
  assert r.returncode == 0, log0[-3000:] + (tmp_path / "l2" / "process_1.log").read_text()[-3000:]
  assert f"from checkpoint step {k}" in log0
  assert f"step {k + 2}/{k + 2}" in log0
  assert (ckpt / str(k + 2)).is_dir()


@pytest.mark.slow
def test_tiny_sweep_end_to_end(tiny_world, tmp_path, jax_cache):
  """Two tiny variants trained and evaluated one after the other: two workdirs with results, a summary;
  running the sweep again skips both."""
  root = tmp_path / "sweep"
  cmd = [sys.executable, "-m", "launch.sweep", "--config", TINY, "--workdir-root", str(root),
         *_world_args(tiny_world)]
  r = subprocess.run(cmd, env=_cpu_env(jax_cache), cwd=REPO, capture_output=True, text=True, timeout=1500)
  names = ["mix.enabled=false", "mix.enabled=true"]
  logs = "".join((root / n / "logs" / "process_0.log").read_text()[-2000:] for n in names
                 if (root / n / "logs" / "process_0.log").exists())
  assert r.returncode == 0, r.stdout[-2000:] + logs
  summary = json.loads((root / "summary.json").read_text())
  assert [run["name"] for run in summary["runs"]] == names
  for run, mix in zip(summary["runs"], [False, True]):
    assert run["status"] == "done" and run["exit_status"] == 0 and run["wall_s"] > 0
    assert run["overrides"] == {"augment.mix.enabled": mix}
    results = json.loads((root / run["name"] / "eval" / "results.json").read_text())
    assert results["checkpoint_step"] == 4 and run["checkpoint_step"] == 4
    assert set(results["tasks"]) == {"keyword"}
    assert 0.0 <= results["tasks"]["keyword"]["scores"]["pretrained"] <= 1.0
    assert run["scores"]["keyword"] == results["tasks"]["keyword"]["scores"]["pretrained"]
    config = json.loads((root / run["name"] / "config.json").read_text())
    assert config["augment"]["mix"]["enabled"] is mix  # The override reached the run.
  assert "| mix.enabled=false | done | 4 |" in (root / "summary.md").read_text()
  assert all(run["clips_per_s"] > 0 for run in summary["runs"])  # Read from the runs' TensorBoard events.
  again = subprocess.run(cmd, env=_cpu_env(jax_cache), cwd=REPO, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and again.stdout.count("results exist, skipped") == 2
