"""The fair random baseline (the run's step-0 model, BatchNorm statistics from each task's training clips),
CPU-seconds per checkpoint, and learning curves, on one tiny training run.

The run: configs/test_tiny.py (8 simulated devices, 6 steps, a checkpoint every 2) on in-memory batches,
with the tone tasks of tests/test_eval_runner.py as its downstream world.
"""
import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from avcl import checkpoints, frontend, sharding, train
from avcl.evaluate import cli, curve, embed, runner
from avcl.evaluate import config as eval_config
from avcl.evaluate import tasks as tasks_lib
from configs import test_tiny
from tests import tiny_data
from tests.test_eval_runner import make_world


def _config(root):
  c = test_tiny.get_config()
  c.data.root = str(root)
  c.eval.tasks = ("keyword", "sound_events")
  c.eval.bn_calibration_windows = 24
  return c


def _batches(config):
  step = 0
  while True:
    yield tiny_data.global_batch(step, config)
    step += 1


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("curve")
  make_world(str(root / "world"), {"train": 16, "validation": 8, "test": 8})
  config = _config(root / "world")
  workdir = str(root / "run")
  out = train.train(config, workdir, batches=_batches(config))
  assert out["status"] == "done" and out["step"] == 6
  # Step 0 of that run, computed again the way training computes it (8 devices, as the run).
  step0 = jax.device_get(train.model_state(train.make_trainer(config, sharding.make_mesh()).init()))
  return workdir, config, step0


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_bit_identical(a, b, what):
  la, lb = _leaves(a), _leaves(b)
  assert la.keys() == lb.keys(), what
  for k in la:
    assert la[k].dtype == lb[k].dtype and np.array_equal(la[k], lb[k]), f"{what}: {k} differs"


def test_random_baseline_is_the_runs_step_0_model(run):
  workdir, config, step0 = run
  # From the file the run wrote, and rebuilt by training's initialisation (runs without the file): both
  # are step 0's state, bit for bit.
  assert os.path.exists(os.path.join(workdir, checkpoints.INITIAL_MODEL_FILE))
  from_file = runner.initial_model(config, workdir)
  _assert_bit_identical(nnx.to_pure_dict(nnx.state(from_file)), step0, "initial model from the workdir")
  rebuilt = runner.initial_model(config)
  _assert_bit_identical(nnx.to_pure_dict(nnx.state(rebuilt)), step0, "initial model rebuilt")

  # The baseline of a task: the same parameters; BatchNorm statistics of the task's training windows.
  task = tasks_lib.get_task("keyword", sample_rate=16000, embedded_root=config.data.root)
  fair = runner.fair_random_model(from_file, config, task)
  _assert_bit_identical(nnx.to_pure_dict(nnx.state(fair, nnx.Param)),
                        nnx.to_pure_dict(nnx.state(from_file, nnx.Param)), "baseline parameters")
  e = config.eval
  window, hop = round(e.window_seconds * 16000), round(e.hop_seconds * 16000)
  windows = embed.sample_windows((ex.audio for ex in task.examples("train")), window, hop,
                                 e.bn_calibration_windows, seed=config.seed)
  assert windows.shape == (24, window)
  # bn0 normalises each mel band of the raw log-mel: its statistics are those of the windows' log-mels.
  x = np.asarray(frontend.from_config(config.audio)(windows), np.float64).reshape(-1, config.audio.n_mels)
  bn0 = fair.encoders["logmel"].bn0
  np.testing.assert_allclose(bn0.mean[...], x.mean(0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(bn0.var[...], x.var(0), rtol=1e-3)
  assert float(np.abs(x.mean())) > 1  # Log-mel is far from the initial mean 0 that bn0 held.
  # Every later BatchNorm of the encoder moved too; the initial model was not modified.
  init_stats = _leaves(nnx.to_pure_dict(nnx.state(from_file.encoders["logmel"], nnx.BatchStat)))
  fair_stats = _leaves(nnx.to_pure_dict(nnx.state(fair.encoders["logmel"], nnx.BatchStat)))
  assert all(not np.array_equal(init_stats[k], fair_stats[k]) for k in init_stats)
  assert all(np.all(v == 0) or np.all(v == 1) for v in init_stats.values())
  # The calibrated encoder in eval mode standardises its first layer on those windows.
  y = (x - np.asarray(bn0.mean[...])) / np.sqrt(np.asarray(bn0.var[...]) + bn0.epsilon)
  np.testing.assert_allclose(y.mean(0), 0, atol=1e-3)


def test_sample_windows_is_uniform_and_seeded():
  clips = [np.full(40, i, np.float32) for i in range(50)]  # One window of 40 samples per clip.
  a = embed.sample_windows(clips, 40, 20, 10, seed=0)
  assert a.shape == (10, 40)
  assert np.array_equal(a, embed.sample_windows(clips, 40, 20, 10, seed=0))
  assert not np.array_equal(a, embed.sample_windows(clips, 40, 20, 10, seed=1))
  assert len(set(a[:, 0].tolist())) == 10 and list(a[:, 0]) == sorted(a[:, 0])  # Distinct, in stream order.
  # Fewer windows than asked for: all of them.
  assert np.array_equal(embed.sample_windows(clips[:3], 40, 20, 10, seed=0)[:, 0], [0, 1, 2])
  # Uniform: over many seeds every clip is drawn about n / N = 1/5 of the time.
  counts = np.zeros(50)
  for s in range(400):
    counts[embed.sample_windows(clips, 40, 20, 10, seed=s)[:, 0].astype(int)] += 1
  assert 0.13 < counts.min() / 400 and counts.max() / 400 < 0.28, counts / 400


@pytest.mark.parametrize("value", [-1, 4097, 2.5, True])
def test_bn_calibration_windows_out_of_range_is_named(value, tmp_path):
  e = ml_collections.ConfigDict({**_config(tmp_path).eval.to_dict(), "bn_calibration_windows": value})
  with pytest.raises(ValueError, match=r"config\.eval\.bn_calibration_windows=.* must be an integer in \[0, 4096\]"):
    eval_config.validate_eval_config(e)


def test_cpu_seconds_are_recorded_per_checkpoint(run):
  workdir, _, _ = run
  with open(os.path.join(workdir, checkpoints.CPU_SECONDS_FILE)) as f:
    cpu = {int(k): v for k, v in json.load(f).items()}
  assert sorted(cpu) == [2, 4, 6]
  assert 0 < cpu[2] < cpu[4] < cpu[6]


def test_curve_scores_every_checkpoint_on_validation(run, capsys):
  workdir, config, _ = run
  assert cli.main(["--workdir", workdir, "--curve", "--no_progress"]) == 0
  out_dir = os.path.join(workdir, "eval")
  with open(os.path.join(out_dir, "curve.json")) as f:
    c = json.load(f)
  curve.validate_curve(c)
  assert c["steps"] == [2, 4, 6] and c["split"] == "validation" and c["probe"] == "linear"
  assert c["cpu_seconds"] == [checkpoints.read_cpu_seconds(workdir)[s] for s in (2, 4, 6)]
  assert set(c["tasks"]) == {"keyword", "sound_events"}
  kw = c["tasks"]["keyword"]
  assert (kw["metric"], kw["n_train"], kw["n_val"]) == ("accuracy", 16, 8)
  # Pure tones: pooled log-mel separates them on validation too.
  assert kw["logmel"] >= 0.9
  for b in ("random_init", "logmel"):
    assert c["mean"][b] == pytest.approx(np.mean([c["tasks"][t][b] for t in c["tasks"]]))
  for i in range(3):
    assert c["mean"]["pretrained"][i] == pytest.approx(np.mean([t["pretrained"][i] for t in c["tasks"].values()]))
  # Step 4's column is what `evaluate` measures on checkpoint 4's validation split (details.json), for the
  # encoder and both baselines: the same features, probes and fair random encoder.
  runner.evaluate(workdir, step=4, progress=False)
  with open(os.path.join(out_dir, "details.json")) as f:
    details = json.load(f)
  assert details["checkpoint_step"] == 4
  for name, t in c["tasks"].items():
    val = {k: v["val_score"] for k, v in details["tasks"][name]["probes"].items()}
    assert t["pretrained"][1] == val["pretrained"], name
    assert t["random_init"] == val["random_init"] and t["logmel"] == val["logmel"], name
  md = open(os.path.join(out_dir, "curve.md")).read()
  assert f"| 4 | {c['cpu_seconds'][1]:.0f} | {100 * kw['pretrained'][1]:.1f} |" in md
  assert f"| logmel | | {100 * kw['logmel']:.1f} |" in md
  assert os.path.getsize(os.path.join(out_dir, "curve.png")) > 10_000
  assert "| step | CPU-s | keyword | sound_events | mean |" in capsys.readouterr().out


def test_curve_flags_conflict(run):
  workdir, _, _ = run
  with pytest.raises(SystemExit, match="--curve"):
    cli.main(["--workdir", workdir, "--curve", "--step", "4"])
