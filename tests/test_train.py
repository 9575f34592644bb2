"""Training: sharding invariance of the step, resume (exact), SIGTERM save, NaN stop, config validation.

Tiny config (configs/test_tiny.py) and in-memory batches. Tests keep test_tiny's num_steps (the schedule
is compiled into the step) so that they share one compiled step through XLA's persistent cache.
"""
import json
import math
import os

import jax
import numpy as np
import pytest

from avcl import checkpoints, config_validation, frontend, optim, sharding, train
from avcl.models import conv as conv_lib
from benchmarks import scale_check
from configs import default as default_config
from configs import test_tiny
from tests import tiny_data
from tests.test_models import _convolutions_outside_ynnpack

# Faster compiles for the step functions tests jit themselves (the values differ only by float rounding).
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _batches(config, start=0):
  step = start
  while True:
    yield tiny_data.global_batch(step, config)
    step += 1


def _leaves_with_paths(tree):
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _assert_trees_close(a, b, *, rtol, what):
  la, lb = _leaves_with_paths(a), _leaves_with_paths(b)
  assert la.keys() == lb.keys(), what
  for k in la:
    x, y = la[k], lb[k]
    # rtol relative to the leaf's scale: near-zero entries of a leaf only carry summation-order noise.
    atol = rtol * max(float(np.max(np.abs(x))), 1e-30) if x.size else 0.0
    if k.endswith("['mean']"):
      # BatchNorm running means: a batch mean of O(1) activations that cancel to ~1e-3, times
      # (1 - momentum). Summing ~10^4 float32 values in another order moves it by ~1e-9 absolute, which can
      # exceed 1e-5 of the (tiny) result; the comparison is on the scale of the summands instead.
      atol = max(atol, 1e-7)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"{what}: {k}")


# -------------------------------------------------------------------------------------------------------
# Sharding invariance.
# -------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_step_is_sharding_invariant():
  """Same global batch on meshes of 1, 2 and 8 devices: same loss, gradients, updated parameters."""
  config = test_tiny.get_config()
  config.augment.mix.partner = "gathered"  # The same partners whatever the mesh.
  config.optim.warmup_steps = 0  # The first step moves the parameters at the peak rate.
  batch = tiny_data.global_batch(0, config)
  results = {}
  for n in (1, 2, 8):
    mesh = sharding.make_mesh(jax.devices()[:n])
    trainer = train.make_trainer(config, mesh)
    step = jax.jit(train.make_train_step(config, mesh, trainer.graphdef, trainer.tx, trainer.schedule,
                                         return_grads=True), compiler_options=FAST)
    state = trainer.init()
    init_model = jax.device_get(train.model_state(state))
    new_state, metrics, grads = step(state, sharding.global_batch_from_local(batch, mesh))
    results[n] = jax.device_get((init_model, metrics, grads, new_state))
  for n in (2, 8):
    init_1, metrics_1, grads_1, state_1 = results[1]
    init_n, metrics_n, grads_n, state_n = results[n]
    _assert_trees_close(init_1, init_n, rtol=0, what=f"initial parameters, 1 vs {n} devices")
    np.testing.assert_allclose(metrics_n["loss"], metrics_1["loss"], rtol=1e-5)
    for k in metrics_1:
      np.testing.assert_allclose(metrics_n[k], metrics_1[k], rtol=1e-5, err_msg=k)
    _assert_trees_close(grads_1, grads_n, rtol=1e-5, what=f"gradients, 1 vs {n} devices")
    _assert_trees_close(train.model_state(state_1), train.model_state(state_n), rtol=1e-5,
                        what=f"updated model, 1 vs {n}")
    _assert_trees_close(state_1["opt_state"], state_n["opt_state"], rtol=1e-5, what=f"opt state, 1 vs {n}")
  # The step did something: parameters moved and the loss is a real contrastive loss.
  assert 0 < results[1][1]["loss"] < 2 * math.log(config.train.global_batch_size)
  moved = [np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(results[1][0]),
                                                 jax.tree.leaves(train.model_state(results[1][3])))]
  assert max(moved) > 0


@pytest.mark.parametrize("audio_domain", ["waveform", "logmel"])
def test_compiled_step_on_8_devices_moves_embeddings_not_clips(audio_domain):
  """The default config's step (mixing partners from other devices) all-gathers only embeddings.

  Clip data (waveforms, STFT frames, log-mels, frames) may travel only by collective-permute, one shard
  per device; before partner_rows and the per-shard frontend, XLA all-gathered all of it onto every device.
  """
  config = default_config.get_config()
  config.augment.mix.audio_domain = audio_domain
  assert config.augment.mix.partner == "global" and config.augment.mix.enabled
  mesh = sharding.make_mesh(jax.devices()[:8])
  trainer = train.make_trainer(config, mesh)
  b, spec = config.train.global_batch_size, sharding.batch_sharding(mesh)
  samples = round(config.data.clip_seconds * config.audio.sample_rate)
  frames = round(config.data.clip_seconds * config.data.fps)
  size = config.data.frame_size
  batch = {"audio": jax.ShapeDtypeStruct((b, samples), np.float32, sharding=spec),
           "frames": jax.ShapeDtypeStruct((b, frames, size, size, 3), np.uint8, sharding=spec)}
  hlo = trainer.step.lower(trainer.abstract_state, batch).compile(compiler_options=FAST).as_text()
  found = scale_check.parse_collectives(hlo)
  gathers = [c["type"] for c in found["instances"] if c["kind"] in ("all-gather", "all-to-all")]
  assert gathers, "the contrastive loss gathers the embeddings"
  for t in gathers:
    assert t.startswith(f"f32[{b},{config.model.embed_dim}]"), f"clip data all-gathered: {t}"
  # The partners arrive by collective-permute, at one shard per device of each clip array.
  moved = found["per_step"]["collective-permute"]
  shard = b // 8
  expected = shard * frames * size * size * 3  # u8 frames.
  if audio_domain == "waveform":
    expected += shard * samples * 4  # f32 waveforms, mixed before the frontend.
  else:  # The partners' f32 log-mels (no waveform encoder reads the mixed waveform: XLA drops its move).
    t = frontend.num_frames(samples, n_fft=config.audio.n_fft, hop_length=config.audio.hop_length)
    expected += shard * t * config.audio.n_mels * 4
  assert moved[1] == expected, found["per_step"]


def test_global_batch_from_local_places_rows_in_order():
  mesh = sharding.make_mesh()
  x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
  g = sharding.global_batch_from_local({"x": x}, mesh)["x"]
  assert g.sharding.spec == jax.sharding.PartitionSpec("data")
  for shard in g.addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), x[shard.index])
  with pytest.raises(ValueError, match=r"train.global_batch_size=30 must be a positive multiple of the 8"):
    sharding.local_batch_size(30, mesh)
  assert sharding.local_batch_size(32, mesh) == 32


# -------------------------------------------------------------------------------------------------------
# Optimizer.
# -------------------------------------------------------------------------------------------------------
def test_schedule_and_decay_mask():
  cfg = default_config.get_config().optim
  cfg.learning_rate, cfg.warmup_steps, cfg.end_learning_rate_fraction = 1.0, 4, 0.1
  lr = optim.learning_rate_schedule(cfg, num_steps=12)
  got = np.array([float(lr(s)) for s in range(13)])
  warm = np.array([0.25, 0.5, 0.75, 1.0])
  progress = np.arange(0, 9) / 8
  cosine = 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress))
  np.testing.assert_allclose(got, np.concatenate([warm, cosine]), rtol=1e-6)
  params = {"conv": {"kernel": np.zeros((3, 3, 4, 8)), "bias": np.zeros(8)}, "bn": {"scale": np.ones(8)},
            "log_inv_temperature": np.zeros(()), "head": {"kernel": np.zeros((8, 8))}}
  assert optim.decay_mask(params) == {"conv": {"kernel": True, "bias": False}, "bn": {"scale": False},
                                      "log_inv_temperature": False, "head": {"kernel": True}}


@pytest.mark.parametrize("name", ["adamw", "lars"])
def test_weight_decay_skips_biases_and_norms(name):
  """With zero gradients only the decay acts: kernels shrink, biases and scales stay put."""
  cfg = default_config.get_config().optim
  cfg.name, cfg.warmup_steps, cfg.weight_decay, cfg.learning_rate = name, 0, 0.1, 0.5
  tx, _ = optim.make_optimizer(cfg, num_steps=10)
  params = {"kernel": np.full((4, 4), 2.0, np.float32), "bias": np.full((4,), 2.0, np.float32),
            "scale": np.full((4,), 2.0, np.float32)}
  grads = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert np.all(np.asarray(updates["kernel"]) < 0)
  assert np.all(np.asarray(updates["bias"]) == 0) and np.all(np.asarray(updates["scale"]) == 0)


# -------------------------------------------------------------------------------------------------------
# Config validation.
# -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value,message", [
    ("train.global_batch_size", 30, "train.global_batch_size=30 must be a positive multiple of the 8 devices"),
    ("augment.mix.max_weight", 0.7, "augment.mix.max_weight=0.7 must be a finite number in [0, 0.5]"),
    ("model.logmel.name", "vgg", "model.logmel.name='vgg' must be one of 'cnn14', 'resnet', ''"),
    ("audio.fmax", 9000.0, "audio.fmax=9000.0 must be a finite number in (0, 8000.0]"),
    ("optim.warmup_steps", 600, "optim.warmup_steps=600 must be an integer in [0, 599]"),
    ("loss.impl", "fancy", "loss.impl='fancy' must be one of 'plain', 'tiled', 'ring'"),
    ("optim.name", "sgd", "optim.name='sgd' must be one of 'adamw', 'lars'"),
    ("data.frame_size", 4, "data.frame_size=4 must be an integer in [8, 1024]"),
    ("seed", 2**31, "seed=2147483648 must be an integer in [0, 2147483647]"),
    ("seed", -1, "seed=-1 must be an integer in [0, 2147483647]"),
    ("model.bn_backward", "fast", "model.bn_backward='fast' must be one of 'custom_vjp', 'autodiff'"),
    ("model.im2col_max_positions", -1, "model.im2col_max_positions=-1 must be an integer >= 0"),
    ("model.cpu_conv_library", "onednn", "model.cpu_conv_library='onednn' must be one of 'eigen', 'ynnpack'"),
])
def test_invalid_field_is_named(field, value, message):
  config = default_config.get_config()
  node = config
  *parents, leaf = field.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate_config(config, num_devices=8)
  assert message in str(e.value)


def test_pair_needing_an_absent_encoder_is_rejected():
  config = default_config.get_config()
  config.loss.pairs.wave_video = 1.0  # model.wave.name is "" in the default config.
  with pytest.raises(config_validation.ConfigError, match=r"loss.pairs.wave_video=1.0 must be 0 because "
                     r"model.wave.name is not set"):
    config_validation.validate_config(config)
  config = default_config.get_config()
  config.model.video.name = ""
  with pytest.raises(config_validation.ConfigError, match=r"loss.pairs.logmel_video"):
    config_validation.validate_config(config)


def test_stats_features_need_cnn14_before_training():
  config = default_config.get_config()
  config.model.logmel.name = "resnet"
  with pytest.raises(config_validation.ConfigError, match=r"eval.features='stats' needs the cnn14 log-mel "
                     r"encoder .* model.logmel.name='resnet'"):
    config_validation.validate_config(config)
  config.eval.features = "pooled"
  config_validation.validate_config(config)


def test_default_configs_are_valid():
  config_validation.validate_config(default_config.get_config(), num_devices=8)
  config_validation.validate_config(test_tiny.get_config(), num_devices=8)
  from configs import cpu_hour, paper_audioset  # pylint: disable=g-import-not-at-top
  config_validation.validate_config(paper_audioset.get_config(), num_devices=256)
  config_validation.validate_config(cpu_hour.get_config(), num_devices=8)


def test_invalid_config_fails_before_anything_is_built(tmp_path, monkeypatch):
  config = test_tiny.get_config()
  config.augment.mix.max_weight = 0.7
  config.train.num_steps = 0
  def no_compile(*a, **k):
    raise AssertionError("make_trainer was reached with an invalid config")
  monkeypatch.setattr(train, "make_trainer", no_compile)
  with pytest.raises(config_validation.ConfigError) as e:
    train.train(config, str(tmp_path / "w"), batches=_batches(config))
  assert "augment.mix.max_weight=0.7" in str(e.value) and "train.num_steps=0" in str(e.value)
  assert not (tmp_path / "w").exists()


# -------------------------------------------------------------------------------------------------------
# Resume, SIGTERM, NaN.
# -------------------------------------------------------------------------------------------------------
class _SigtermAfter:
  """Batches of `config`; sends this process SIGTERM while producing the batch of step `at` (0-based)."""

  def __init__(self, config, at):
    self.config, self.at, self.step = config, at, 0

  def __iter__(self):
    return self

  def __next__(self):
    if self.step == self.at:
      os.kill(os.getpid(), 15)
    b = tiny_data.global_batch(self.step, self.config)
    self.step += 1
    return b


def _restore_all(workdir, step, config):
  mesh = sharding.make_mesh()
  trainer = train.make_trainer(config, mesh)
  manager = checkpoints.make_manager(workdir, read_only=True)
  try:
    return jax.device_get(checkpoints.restore(manager, step, trainer.abstract_state)), manager.all_steps()
  finally:
    manager.close()


def test_sigterm_saves_and_resume_continues_exactly(tmp_path):
  """A run stopped by SIGTERM saves at the step it reached; the resumed run ends in the same state as an
  uninterrupted run over the same batches (step count, parameters and optimizer state continue)."""
  config = test_tiny.get_config()
  config.train.checkpoint_every = 100  # Only the SIGTERM save and the final save.
  ref = train.train(config, str(tmp_path / "ref"), batches=_batches(config))
  assert ref["status"] == "done" and ref["step"] == 6

  work = str(tmp_path / "run")
  first = train.train(config, work, batches=_SigtermAfter(config, at=2))
  assert first["status"] == "preempted"
  stopped = first["step"]
  assert stopped == 3  # SIGTERM arrived while fetching step 3's batch; step 3 finished, then saved.
  assert checkpoints.make_manager(work, read_only=True).all_steps() == [stopped]
  cpu_first = checkpoints.read_cpu_seconds(work)
  assert list(cpu_first) == [stopped] and cpu_first[stopped] > 0
  second = train.train(config, work, batches=_batches(config, start=stopped))
  assert second["status"] == "done" and second["step"] == 6
  # The resumed run logged only its own steps (log_every = 2).
  assert [s for s, _ in second["history"]] == [4, 6]
  # CPU-seconds continue from the figure of the checkpoint the run resumed from.
  cpu = checkpoints.read_cpu_seconds(work)
  assert list(cpu) == [stopped, 6] and cpu[stopped] == cpu_first[stopped] and cpu[6] > cpu[stopped]

  resumed, steps = _restore_all(work, 6, config)
  assert steps == [stopped, 6]
  reference, _ = _restore_all(str(tmp_path / "ref"), 6, config)
  assert int(resumed["step"]) == 6
  _assert_trees_close(reference, resumed, rtol=1e-6, what="resumed vs uninterrupted run")
  # Adam's step count continued from the checkpoint instead of restarting.
  counts = [int(x) for x in jax.tree.leaves(resumed["opt_state"]) if np.ndim(x) == 0]
  assert counts and all(c == 6 for c in counts)


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path):
  config = test_tiny.get_config()  # 6 steps, a checkpoint every 2.

  def batches():
    for step in range(100):
      b = tiny_data.global_batch(step, config)
      if step == 4:  # The 5th update (checkpoint numbering: step 5) sees NaN audio.
        b["audio"][3, 100] = np.nan
      yield b

  work = str(tmp_path / "nan")
  with pytest.raises(train.NonFiniteLossError,
                     match=r"non-finite loss=nan, grad_norm=nan at step 5: stopping; the last good checkpoint "
                     r"is step 4"):
    train.train(config, work, batches=batches())
  state, steps = _restore_all(work, 4, config)
  assert steps == [2, 4]  # Nothing at or after the NaN step was written.
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


def multiprocess_config(num_steps: int):
  """Tiny config for the multi-process agreement test (shared with tests/mp_train_worker.py)."""
  config = test_tiny.get_config()
  config.augment.mix.partner = "gathered"  # The same partners whatever the process/device layout.
  config.train.num_steps = num_steps
  config.train.log_every = 1  # Every step's loss is compared.
  config.train.checkpoint_every = num_steps
  return config


def test_learned_temperature_trains_and_is_checkpointed(tmp_path):
  config = test_tiny.get_config()
  config.loss.learn_temperature = True
  config.train.log_every = 1
  out = train.train(config, str(tmp_path / "t"), batches=_batches(config))
  temps = [m["temperature"] for _, m in out["history"]]
  assert temps[0] == pytest.approx(0.1, rel=1e-6)  # Step 1 uses the initial value...
  assert temps[1] != temps[0]  # ...which the first update moved.
  state, _ = _restore_all(str(tmp_path / "t"), 6, config)
  t = state["params"]["log_inv_temperature"]
  assert np.isfinite(t) and np.exp(-float(t)) != 0.1
  # One tree for the parameters and the optimizer: the temperature sits next to the model in both.
  assert set(state["params"]) == {"model", "log_inv_temperature"}
  assert set(state["opt_state"][0].mu) == {"model", "log_inv_temperature"}
  # The same state in the layout of older runs (the temperature beside the whole model state) restores to it.
  old = {"model": train.model_state(state), "opt_state": state["opt_state"], "step": state["step"],
         "log_inv_temperature": state["params"]["log_inv_temperature"]}
  manager = checkpoints.make_manager(tmp_path / "old")
  checkpoints.save(manager, 6, old)
  manager.wait_until_finished()
  trainer = train.make_trainer(config, sharding.make_mesh())
  assert checkpoints.is_old_layout(manager, 6)
  restored = jax.device_get(checkpoints.restore_train_state(manager, 6, trainer.abstract_state))
  manager.close()
  _assert_trees_close(state, restored, rtol=0, what="old layout with a learned temperature")


def test_learned_temperature_recovers_from_its_clamp():
  """The clamp is on the parameter: past it (as the code that clamped only its use could leave it) the next
  update clips it to the clamp, and from there the loss's gradient moves it back. Clamping only the use gave
  it a zero gradient past the clamp, so it stayed there for good."""
  config = test_tiny.get_config()
  config.loss.learn_temperature = True
  config.optim.warmup_steps = 0
  config.optim.learning_rate = 0.1  # Adam moves the scalar by about this much per step.
  mesh = sharding.make_mesh(jax.devices()[:1])
  trainer = train.make_trainer(config, mesh)
  step = jax.jit(train.make_train_step(config, mesh, trainer.graphdef, trainer.tx, trainer.schedule,
                                       return_grads=True), compiler_options=FAST)
  state = trainer.init()
  past = train.MAX_LOG_INV_TEMPERATURE + 1.0  # Temperature 0.0037, below the 0.01 clamp.
  state["params"]["log_inv_temperature"] = jax.device_put(
      np.float32(past), trainer.state_sharding["params"]["log_inv_temperature"])
  params, grads_seen = [], []
  for s in range(4):
    state, metrics, grads = step(state, sharding.global_batch_from_local(tiny_data.global_batch(s, config), mesh))
    params.append(float(state["params"]["log_inv_temperature"]))
    grads_seen.append(float(grads["log_inv_temperature"]))
    assert float(metrics["temperature"]) >= train.MIN_TEMPERATURE * (1 - 1e-6)
  assert all(g != 0 for g in grads_seen), grads_seen
  assert all(p <= train.MAX_LOG_INV_TEMPERATURE for p in params), params
  # Random embeddings at the clamp's temperature give a loss far above log(batch): it wants a higher
  # temperature, so the parameter leaves the clamp and keeps falling.
  assert params[-1] < train.MAX_LOG_INV_TEMPERATURE - 0.1, params
  assert params[1] > params[2] > params[3], params


# -------------------------------------------------------------------------------------------------------
# Resume guards: config drift, orbax leftovers (no compile: they stop before make_trainer).
# -------------------------------------------------------------------------------------------------------
class _Built(Exception):
  """Raised instead of building the trainer: the checks before it passed."""


def _workdir_with_checkpoint(tmp_path, config, step=4):
  """A workdir as a first start leaves it: config.json and one finished checkpoint (a stand-in state)."""
  work = tmp_path / "w"
  checkpoints.write_config(work, config)
  manager = checkpoints.make_manager(work, keep=10)
  checkpoints.save(manager, step, {"x": np.zeros(2, np.float32)})
  manager.wait_until_finished()
  manager.close()
  return work


@pytest.fixture
def no_trainer(monkeypatch):
  def built(*a, **k):
    raise _Built()
  monkeypatch.setattr(train, "make_trainer", built)


def test_resume_with_changed_config_is_refused_naming_every_field(tmp_path, no_trainer):
  config = test_tiny.get_config()
  work = _workdir_with_checkpoint(tmp_path, config)
  stored = (work / "config.json").read_text()
  changed = test_tiny.get_config()
  changed.audio.n_mels = 32
  changed.augment.gain_db = 3.0
  changed.train.num_steps = 8  # Free to change: not named in the error.
  with pytest.raises(checkpoints.ConfigChangedError) as e:
    train.train(changed, str(work), batches=_batches(changed))
  msg = str(e.value)
  assert "from step 4" in msg and "2 field(s)" in msg
  assert "audio.n_mels: 16 -> 32" in msg and "augment.gain_db: 6.0 -> 3.0" in msg
  assert "train.num_steps" not in msg.split("Fields free")[0]
  assert checkpoints.resumable("eval.tasks") and not checkpoints.resumable("evaluation.x")
  assert not checkpoints.resumable("data.root") and not checkpoints.resumable("train.num_steps_x")
  assert checkpoints.resumable("model.bn_backward") and checkpoints.resumable("model.im2col_max_positions")
  assert checkpoints.resumable("model.cpu_conv_library")
  assert not checkpoints.resumable("model.dtype")
  assert "--allow_config_change" in msg
  # Nothing was overwritten or logged by the refused resume.
  assert (work / "config.json").read_text() == stored
  assert not (work / checkpoints.CONFIG_CHANGES_FILE).exists()


def _workdir_with_restorable_checkpoint(tmp_path, config):
  """A workdir whose checkpoint at train.num_steps holds a real initial state: a resume restores it and has
  no step left to run (nothing compiles but the initialiser)."""
  work = tmp_path / "w"
  checkpoints.write_config(work, config)
  trainer = train.make_trainer(config, sharding.make_mesh())
  manager = checkpoints.make_manager(work, keep=10)
  checkpoints.save(manager, config.train.num_steps, trainer.init())
  manager.wait_until_finished()
  manager.close()
  return work


def test_allowed_and_free_config_changes_are_logged_after_the_restore(tmp_path):
  config = test_tiny.get_config()
  work = _workdir_with_restorable_checkpoint(tmp_path, config)
  free = test_tiny.get_config()
  free.train.log_every = 1
  free.train.keep_checkpoints = 5
  free.eval.batch_size = 8  # Evaluation's fields never change training.
  assert train.train(free, str(work), batches=_batches(free))["status"] == "done"  # No flag needed.
  changed = test_tiny.get_config()
  changed.augment.gain_db = 3.0  # Same parameter shapes, other training: needs the flag.
  with pytest.raises(checkpoints.ConfigChangedError, match="augment.gain_db: 6.0 -> 3.0"):
    train.train(changed, str(work), batches=_batches(changed))
  assert train.train(changed, str(work), batches=_batches(changed), allow_config_change=True)["step"] == 6
  records = [json.loads(line) for line in (work / checkpoints.CONFIG_CHANGES_FILE).read_text().splitlines()]
  assert [r["step"] for r in records] == [6, 6]
  assert not records[0]["allowed_by_flag"] and records[1]["allowed_by_flag"]
  assert records[0]["changes"] == {"eval.batch_size": {"old": 16, "new": 8},
                                   "train.keep_checkpoints": {"old": 10, "new": 5},
                                   "train.log_every": {"old": 2, "new": 1}}
  assert records[1]["changes"] == {"augment.gain_db": {"old": 6.0, "new": 3.0},
                                   "eval.batch_size": {"old": 8, "new": 16},
                                   "train.keep_checkpoints": {"old": 5, "new": 10},
                                   "train.log_every": {"old": 1, "new": 2}}
  # config.json now holds the config the run continues with, so the next resume compares with that.
  assert checkpoints.load_config(work).augment.gain_db == 3.0
  assert not [p for p in os.listdir(work) if ".tmp" in p]  # The atomic writes left no temporary file.
  train.train(changed, str(work), batches=_batches(changed))
  assert len((work / checkpoints.CONFIG_CHANGES_FILE).read_text().splitlines()) == 2  # No change, no line.


def test_new_run_without_checkpoint_writes_its_config(tmp_path, no_trainer):
  """A run killed before its first checkpoint trained nothing: a restart with another config just starts."""
  work = tmp_path / "w"
  checkpoints.write_config(work, test_tiny.get_config())
  changed = test_tiny.get_config()
  changed.audio.n_mels = 32
  with pytest.raises(_Built):
    train.train(changed, str(work), batches=_batches(changed))
  assert checkpoints.load_config(work).audio.n_mels == 32
  assert not (work / checkpoints.CONFIG_CHANGES_FILE).exists()


def test_unfinished_orbax_saves_are_removed_before_listing(tmp_path, no_trainer):
  config = test_tiny.get_config()
  work = _workdir_with_checkpoint(tmp_path, config, step=2)
  ckpt = work / checkpoints.CHECKPOINT_DIR
  # What a save killed midway leaves (orbax 0.12 names; older versions append -<timestamp>).
  for name in ("4.orbax-checkpoint-tmp", "6.orbax-checkpoint-tmp-1733100000"):
    (ckpt / name / "state").mkdir(parents=True)
    (ckpt / name / "state" / "junk").write_bytes(b"x" * 10)
  with pytest.raises(_Built):
    train.train(config, str(work), batches=_batches(config))
  assert sorted(os.listdir(ckpt)) == ["2"]


@pytest.mark.parametrize("process_count", [1, 2])
def test_train_batches_after_a_resume_are_the_uninterrupted_ones(tmp_path_factory, monkeypatch, process_count):
  """make_train_batches at start_step s (what a resume reads, real tf.data) yields batch s, s+1, ... of the
  stream from step 0, on every process; steps past the end of an epoch (32 clips, 16 per step) included."""
  root = tiny_data.write_pretrain_shards(str(tmp_path_factory.mktemp("data")), num_clips=32, seconds=1.0)
  config = test_tiny.get_config()
  config.data.root = root
  local = config.train.global_batch_size // process_count
  monkeypatch.setattr(jax, "process_count", lambda: process_count)
  for p in range(process_count):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    it = train.make_train_batches(config, local, start_step=0)
    full = [next(it) for _ in range(7)]
    it = train.make_train_batches(config, local, start_step=5)
    resumed = [next(it) for _ in range(2)]
    for k, (x, y) in enumerate(zip(full[5:], resumed)):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=f"process {p}, step {5 + k}, {key}")
    assert not np.array_equal(full[5]["audio"], full[6]["audio"])  # The comparison sees distinct batches.


def test_step_compiles_with_the_configured_cpu_conv_library():
  """make_trainer passes config model.cpu_conv_library to the step's compile on CPU: with "eigen" every
  convolution of the step runs as XLA's own kernel, with "ynnpack" (XLA's default) some go to YNNPACK."""
  outside, total = {}, {}
  for lib in conv_lib.CPU_CONV_LIBRARIES:
    config = test_tiny.get_config()
    config.model.cpu_conv_library = lib
    config.model.logmel.width = 32  # YNNPACK (XLA's default) leaves test_tiny's 4-channel convolutions alone.
    mesh = sharding.make_mesh(jax.devices()[:1])
    trainer = train.make_trainer(config, mesh)
    b, spec = config.train.global_batch_size, sharding.batch_sharding(mesh)
    samples = round(config.data.clip_seconds * config.audio.sample_rate)
    frames, size = round(config.data.clip_seconds * config.data.fps), config.data.frame_size
    batch = {"audio": jax.ShapeDtypeStruct((b, samples), np.float32, sharding=spec),
             "frames": jax.ShapeDtypeStruct((b, frames, size, size, 3), np.uint8, sharding=spec)}
    hlo = trainer.step.lower(trainer.abstract_state, batch).compile().as_text()
    outside[lib], total[lib] = _convolutions_outside_ynnpack(hlo), hlo.count(" convolution(")
  assert outside["eigen"] == total["eigen"] > 0, (outside, total)
  assert outside["ynnpack"] < total["ynnpack"], (outside, total)
