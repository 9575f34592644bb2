"""Evaluation and HEAR from a real orbax checkpoint (avcl.checkpoints layout); CLI; mismatch errors."""
import contextlib
import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from avcl import checkpoints, hear, models
from avcl.evaluate import cli, runner
from tests.test_eval_runner import make_world, tiny_config


def write_checkpoint(workdir, config, step=5, seed=3, *, old_layout=False):
  """A checkpoint as training writes it: WORKDIR/config.json and WORKDIR/checkpoints/<step>/state; with
  old_layout, as training wrote it before the train state was split into "params" and "batch_stats"."""
  model = models.build_model(config.model, config.audio, rngs=nnx.Rngs(seed))
  checkpoints.write_config(workdir, config)
  manager = checkpoints.make_manager(workdir)
  if old_layout:
    state = {"model": nnx.to_pure_dict(nnx.state(model))}
  else:
    _, params, batch_stats = nnx.split(model, nnx.Param, ...)
    state = {"params": {"model": nnx.to_pure_dict(params)}, "batch_stats": nnx.to_pure_dict(batch_stats)}
  checkpoints.save(manager, step, dict(state, opt_state={}, step=np.int32(step)))
  manager.wait_until_finished()
  manager.close()
  return model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("ckpt")
  make_world(str(root / "world"), {"train": 16, "validation": 8, "test": 8})
  config = tiny_config(root / "world")
  config.eval.tasks = ("keyword",)
  workdir = str(root / "run")
  model = write_checkpoint(workdir, config)
  return workdir, config, model


@pytest.fixture(scope="module")
def evaluated(run_dir):
  """runner.evaluate's results on run_dir and what it printed (evaluated once: ~10 s on 2 cores)."""
  workdir, _, _ = run_dir
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    results = runner.evaluate(workdir, progress=False)
  return results, out.getvalue()


def test_evaluate_from_checkpoint_and_cli(run_dir, evaluated, tmp_path):
  workdir, config, _ = run_dir
  results, printed = evaluated
  assert results["checkpoint_step"] == 5
  assert results["tasks"]["keyword"]["n_train"] == 16
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    assert json.load(f) == results
  assert "| keyword | accuracy | 16 | 8 |" in printed
  # The CLI: the MLP probe, an explicit step; on a run without baselines and with a narrow hidden layer, since
  # the MLP probe's grid (9 settings x 2000 Adam steps) is the suite's slowest in-process work: about 60 s on
  # 2 cores with the baselines, 20 s without them at the default 512 hidden units (2026-12-03).
  mlp_run, mlp_config = str(tmp_path / "mlp"), config.copy_and_resolve_references()
  mlp_config.eval.baselines = ()
  mlp_config.eval.mlp_hidden = 16
  write_checkpoint(mlp_run, mlp_config)
  assert cli.main(["--workdir", mlp_run, "--probe", "mlp", "--step", "5", "--no_progress"]) == 0
  details = json.load(open(os.path.join(mlp_run, "eval", "details.json")))
  assert details["probe"] == "mlp" and details["checkpoint_step"] == 5
  assert set(details["tasks"]["keyword"]["probes"]) == {"pretrained"}
  assert details["tasks"]["keyword"]["probes"]["pretrained"]["hparams"]["hidden"] == 16  # The config's width.


def test_old_layout_checkpoint_evaluates_as_the_new_one(run_dir, evaluated, tmp_path):
  """A checkpoint of the older train-state layout ({"model": whole nnx state, ...}) still evaluates: the same
  model, the same results."""
  workdir, config, model = run_dir
  old = str(tmp_path / "old")
  write_checkpoint(old, config, old_layout=True)
  manager = checkpoints.make_manager(old, read_only=True)
  assert checkpoints.is_old_layout(manager, 5)
  manager.close()
  restored, _, step = checkpoints.restore_model(old)
  assert step == 5
  want, got = nnx.to_pure_dict(nnx.state(model)), nnx.to_pure_dict(nnx.state(restored))
  assert jax.tree.structure(want) == jax.tree.structure(got)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)))
  results = runner.evaluate(old, progress=False)
  assert results["tasks"] == evaluated[0]["tasks"]


def test_cli_help():
  out = subprocess.run([sys.executable, "-m", "avcl.evaluate", "--help"], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(__file__)), timeout=120)
  assert out.returncode == 0 and "--workdir" in out.stdout and "speech_commands" in out.stdout


def test_mismatched_config_names_field(run_dir):
  workdir, config, _ = run_dir
  other = tiny_config(config.data.root)
  other.model.logmel.depth = 3
  with pytest.raises(ValueError, match=r"config\.model\.logmel\.depth is 3 in the given config but 2"):
    runner.evaluate(workdir, other, progress=False)


def test_checkpoint_of_another_architecture_names_parameter(run_dir, tmp_path):
  workdir, config, _ = run_dir
  # A workdir whose config.json says width 8 but whose checkpoint holds a width-4 encoder.
  bad = str(tmp_path / "bad")
  write_checkpoint(bad, config)
  wide = tiny_config(config.data.root)
  wide.model.logmel.width = 8
  checkpoints.write_config(bad, wide)
  with pytest.raises(checkpoints.CheckpointError, match=r"logmel.*shape"):
    runner.evaluate(bad, progress=False)
  with pytest.raises(checkpoints.CheckpointError, match=r"logmel.*shape"):
    hear.load_model(bad)


def test_hear_load_model_from_workdir_and_step_dir(run_dir):
  workdir, config, model = run_dir
  for path in (workdir, os.path.join(workdir, "checkpoints", "5")):
    m = hear.load_model(path)
    assert isinstance(m, hear.tf.Module) and m.checkpoint_step == 5 and m.sample_rate == 16000
  audio = np.random.default_rng(0).uniform(-1, 1, (2, 9000)).astype(np.float32)
  ref = hear.numpy_reference(model, config).embed_clips(list(audio))
  np.testing.assert_allclose(hear.get_scene_embeddings(audio, m).numpy(), ref, rtol=1e-3, atol=1e-4)
  with pytest.raises(FileNotFoundError, match="not an avcl workdir"):
    hear.load_model(os.path.dirname(workdir))
