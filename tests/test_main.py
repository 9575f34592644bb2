"""avcl.main: distributed detection, world generation guard, and a bad override failing fast."""
import os
import subprocess
import sys

import jax
import pytest
from absl import app

from avcl import main as main_lib
from configs import test_tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def calls(monkeypatch):
  got = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: got.append(kw))
  for var in ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(var, raising=False)
  return got


def test_distributed_auto_single_machine_does_not_initialize(calls):
  assert main_lib.initialize_distributed("auto", None, None, None) is False
  assert calls == []


def test_distributed_auto_detects_tpu_pod_and_explicit_flags(calls, monkeypatch):
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")  # A single-host TPU VM: no cluster.
  assert main_lib.initialize_distributed("auto", None, None, None) is False
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3,10.0.0.4,10.0.0.5")
  assert main_lib.initialize_distributed("auto", None, None, None) is True
  assert calls == [{}]  # Auto-detection by jax.distributed itself.
  monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
  assert main_lib.initialize_distributed("auto", "127.0.0.1:1234", 2, 1) is True
  assert calls[-1] == {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}
  assert main_lib.initialize_distributed("on", None, None, None) is True and calls[-1] == {}
  assert main_lib.initialize_distributed("off", None, None, None) is False and len(calls) == 3


def test_distributed_flag_errors(calls):
  with pytest.raises(app.UsageError, match="needs --num_processes and --process_id"):
    main_lib.initialize_distributed("auto", "127.0.0.1:1234", None, None)
  with pytest.raises(app.UsageError, match="need --coordinator_address"):
    main_lib.initialize_distributed("auto", None, 2, 0)
  with pytest.raises(app.UsageError, match="contradicts"):
    main_lib.initialize_distributed("off", "127.0.0.1:1234", 2, 0)
  assert calls == []


def test_missing_data_without_generation_is_a_clear_error(tmp_path):
  config = test_tiny.get_config()
  config.data.root = str(tmp_path / "nothing")
  config.data.generate_if_missing = False
  with pytest.raises(FileNotFoundError, match=r"holds no data .*data.generate_if_missing is False"):
    main_lib.ensure_world(config)


def test_bad_override_fails_before_compiling(tmp_path):
  work = tmp_path / "w"
  out = subprocess.run(
      [sys.executable, "-m", "avcl.main", "--config", os.path.join(REPO, "configs", "test_tiny.py"),
       "--workdir", str(work), "--config.augment.mix.max_weight=0.7", "--config.train.global_batch_size=30"],
      env=dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu"), capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-2000:]
  assert "augment.mix.max_weight=0.7 must be a finite number in [0, 0.5]" in out.stderr
  assert "train.global_batch_size=30 must be a positive multiple of the 8 devices" in out.stderr
  assert "Traceback" not in out.stderr
  assert not work.exists()


def test_interrupted_world_generation_is_not_taken_for_data(tmp_path, monkeypatch):
  """A killed generation leaves pretrain/ shards and the GENERATING marker but no world.json: it is not a
  dataset. Without generation that is an error naming it; with generation the world is made again."""
  from data_pipeline.world import generator  # pylint: disable=g-import-not-at-top
  root = tmp_path / "world"
  (root / "pretrain").mkdir(parents=True)
  (root / "pretrain" / "train-00000-of-00001.tfrecord").write_bytes(b"partial")
  (root / generator.GENERATING_MARKER).write_text("pid 1\n")
  config = test_tiny.get_config()
  config.data.root = str(root)
  config.data.generate_if_missing = False
  with pytest.raises(FileNotFoundError, match="interrupted embedded-world generation"):
    main_lib.ensure_world(config)
  ran = []
  monkeypatch.setattr(main_lib.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
  config.data.generate_if_missing = True
  main_lib.ensure_world(config)
  assert ran and ran[0][1:4] == ["-m", "data_pipeline.world", "--output"]
  # A finished world (world.json written, marker removed) and any dataset with a pretrain/ are data.
  ran.clear()
  (root / generator.GENERATING_MARKER).unlink()
  main_lib.ensure_world(config)
  assert not ran


def test_generation_marks_the_world_until_world_json(tmp_path, monkeypatch):
  """The generator writes GENERATING first and removes it only after world.json."""
  from data_pipeline.world import generator  # pylint: disable=g-import-not-at-top
  seen = {}

  def fail_first_render(job):
    seen["marker_during"] = (tmp_path / "w" / generator.GENERATING_MARKER).exists()
    raise RuntimeError("killed")

  monkeypatch.setattr(generator, "render_clip", fail_first_render)
  with pytest.raises(RuntimeError, match="killed"):
    generator.generate(str(tmp_path / "w"), clips=8, workers=1, progress=False)
  assert seen["marker_during"] and (tmp_path / "w" / generator.GENERATING_MARKER).exists()
  assert not (tmp_path / "w" / "world.json").exists()


def test_changed_config_on_resume_exits_1_naming_the_field_unless_allowed(tmp_path):
  """Through the CLI: a refused resume is a one-line error (exit 1, no traceback); --allow_config_change
  gets past the check (here to the restore, which then fails on the stand-in checkpoint's shapes)."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  from avcl import checkpoints  # pylint: disable=g-import-not-at-top
  from tests import tiny_data  # pylint: disable=g-import-not-at-top
  data = tiny_data.write_pretrain_shards(str(tmp_path / "data"), num_clips=16, seconds=0.5)
  work = tmp_path / "w"
  config = test_tiny.get_config()
  config.data.root = data
  config.data.generate_if_missing = False
  checkpoints.write_config(work, config)
  manager = checkpoints.make_manager(work, keep=10)
  checkpoints.save(manager, 2, {"x": np.zeros(2, np.float32)})
  manager.wait_until_finished()
  manager.close()
  cmd = [sys.executable, "-m", "avcl.main", "--config", os.path.join(REPO, "configs", "test_tiny.py"),
         "--workdir", str(work), f"--config.data.root={data}", "--config.data.generate_if_missing=False",
         "--config.audio.n_mels=32"]
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1, out.stderr[-2000:]
  assert "refusing to resume" in out.stderr and "audio.n_mels: 16 -> 32" in out.stderr
  assert "Traceback" not in out.stderr
  allowed = subprocess.run(cmd + ["--allow_config_change"], env=env, capture_output=True, text=True,
                           timeout=300)
  assert "refusing to resume" not in allowed.stderr
  assert "does not match the config's architecture" in allowed.stderr, allowed.stderr[-2000:]
  # The restore failed, so the change never took effect: nothing recorded, config.json as it was.
  assert not (work / checkpoints.CONFIG_CHANGES_FILE).exists()
  assert checkpoints.load_config(work).audio.n_mels == 16
