"""The training loop: mesh, model, optimizer, restore-or-init, one jitted step, checkpoints, metrics.

Train state (a plain pytree, exactly what a checkpoint holds; avcl.checkpoints describes the files):
  {"params": {"model": the AVModel's nnx.Param state as a pure dict,
              "log_inv_temperature": f32[] (only when config.loss.learn_temperature)},
   "batch_stats": the AVModel's other state (BatchNorm statistics) as a pure dict,
   "opt_state": optax state over "params" (exactly the tree the optimizer updates),
   "step": int32[] optimizer steps taken}
The model is split once, `nnx.split(model, nnx.Param, ...)`; its graphdef (Trainer.graphdef) merges
state["params"]["model"] and state["batch_stats"] back into an AVModel inside the step. Checkpoints of the
older layout {"model": whole nnx state, "opt_state", "step"[, "log_inv_temperature"]} (same optimizer tree)
still restore, for evaluation and resume (checkpoints.restore_train_state).
All of it is replicated over the mesh; the batch is sharded over the mesh axis "data". The step is
written in the global view (jnp on the whole batch); XLA partitions it. Two parts run their own shard_map
over "data": the movement of mixing partners (one collective-permute of a shard, `augment.partner_rows`)
and the contrastive loss (which all-gathers or rings the embeddings). No clip data (waveform, STFT, log-mel
or frames) is ever all-gathered: tests/test_train.py checks the compiled step's collectives.

Randomness: `jax.random.key(config.seed)` splits into an init key (parameters) and a train key; step s
uses `fold_in(train_key, s)` for its augmentations. Keys never depend on the mesh or the process count,
so the same global batch gives the same step on 1 or 8 devices, 1 or 2 processes.
"""
from __future__ import annotations

import dataclasses
import logging as py_logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import nnx
from jax.experimental import multihost_utils

from avcl import augment as augment_lib
from avcl import checkpoints, config_validation, losses, optim, sharding
from avcl import frontend as frontend_lib
from avcl.models import conv as conv_lib
from avcl.models import from_config
from data_pipeline import input as input_lib
from data_pipeline import paths, schema, tf_cpu

# Minimum temperature when it is learned (CLIP's 1/100 clamp): below it the logits overflow. The clamp is
# on the parameter (log_inv_temperature <= MAX_LOG_INV_TEMPERATURE after every update), not on its use: a
# clamp on the use has zero gradient past it, so a parameter pushed past it could never come back.
MIN_TEMPERATURE = 0.01
MAX_LOG_INV_TEMPERATURE = -math.log(MIN_TEMPERATURE)


_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


class NonFiniteLossError(FloatingPointError):
  """The loss (or gradient norm) became NaN or Inf; the message names the step."""


# ---------------------------------------------------------------------------------------------------------
# Model and state.
# ---------------------------------------------------------------------------------------------------------
def initial_model_state(config: ml_collections.ConfigDict) -> dict:
  """The model state (pure dict: parameters and BatchNorm statistics) a new run of `config` starts from.

  The same function and compile options as `make_trainer`'s init, on one device: the same bits as a run's
  step 0 on any mesh of the same backend (tests/test_eval_curve.py). Evaluation uses it for runs that did
  not write WORKDIR/initial_model.msgpack.
  """
  fn = jax.jit(lambda: nnx.to_pure_dict(nnx.state(from_config.build(config, 1))),
               compiler_options=_FAST_COMPILE if jax.default_backend() == "cpu" else None)
  with jax.default_device(jax.local_devices()[0]):
    return jax.device_get(fn())


def model_state(state: dict) -> dict:
  """The whole AVModel state of a train state as one pure dict (nnx.state(model): parameters and BatchNorm
  statistics), the layout of WORKDIR/initial_model.msgpack and of `initial_model_state`."""
  return checkpoints.join_model_state(state["params"]["model"], state["batch_stats"])


def _pairs(config: ml_collections.ConfigDict) -> dict[str, float]:
  """The enabled InfoNCE pairs {"a_b": weight > 0}."""
  return {name: weight for name, (_, _, weight) in losses.enabled_pairs(config.loss.pairs).items()}


def _model_inputs_needed(config: ml_collections.ConfigDict) -> set[str]:
  return losses.pair_inputs(config.loss.pairs)


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Everything the loop needs that is fixed for a run: mesh, model graph, optimizer, jitted functions."""
  config: ml_collections.ConfigDict
  mesh: jax.sharding.Mesh
  graphdef: nnx.GraphDef  # of nnx.split(model, nnx.Param, ...): merges state["params"]["model"], ["batch_stats"]
  tx: optax.GradientTransformation
  schedule: Callable[[Any], Any]
  state_sharding: Any  # pytree of NamedSharding matching the train state (all replicated)
  abstract_state: Any  # pytree of ShapeDtypeStruct with shardings (restore target)
  init: Callable[[], dict]  # jitted: () -> train state
  step: Callable[[dict, dict], tuple[dict, dict]]  # jitted train_step, state donated: -> (state, metrics)


def make_trainer(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Trainer:
  """Splits the model once, builds the optimizer and the jitted init and train step for `mesh`."""
  bn_groups = mesh.devices.size
  # The one split of the model: parameters (what the optimizer updates) and the rest (BatchNorm statistics,
  # which the forward pass updates). Its graphdef turns the two pure dicts of the state back into a model.
  graphdef, _, _ = nnx.split(nnx.eval_shape(lambda: from_config.build(config, bn_groups)), nnx.Param, ...)
  tx, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
  replicated = sharding.replicated(mesh)

  def init_fn() -> dict:
    _, params, batch_stats = nnx.split(from_config.build(config, bn_groups), nnx.Param, ...)
    params = {"model": nnx.to_pure_dict(params)}
    if config.loss.learn_temperature:
      params["log_inv_temperature"] = jnp.asarray(-math.log(config.loss.temperature), jnp.float32)
    return {"params": params, "batch_stats": nnx.to_pure_dict(batch_stats), "opt_state": tx.init(params),
            "step": jnp.zeros((), jnp.int32)}

  abstract = jax.eval_shape(init_fn)
  state_sharding = jax.tree.map(lambda _: replicated, abstract)
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                abstract, state_sharding)
  # Initialisation runs once and is mostly threefry bit-twiddling, which LLVM optimises for ages: compiling
  # it unoptimised takes seconds instead of half a minute on a 2-core CPU (values differ from an optimised
  # compile by float32 rounding, ~2e-7, and are the same on every process and mesh).
  init = jax.jit(init_fn, out_shardings=state_sharding,
                 compiler_options=_FAST_COMPILE if jax.default_backend() == "cpu" else None)
  # On CPU, which library runs the convolutions (config model.cpu_conv_library; avcl.models.conv).
  options = conv_lib.compiler_options(config.model.get("cpu_conv_library", "ynnpack"),
                                     mesh.devices.flat[0].platform)
  step = jax.jit(make_train_step(config, mesh, graphdef, tx, schedule),
                 in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                 out_shardings=(state_sharding, replicated), donate_argnums=(0,), compiler_options=options)
  return Trainer(config=config, mesh=mesh, graphdef=graphdef, tx=tx, schedule=schedule,
                 state_sharding=state_sharding, abstract_state=abstract_state, init=init, step=step)


def make_train_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, graphdef: nnx.GraphDef,
                    tx: optax.GradientTransformation, schedule: Callable[[Any], Any], *,
                    return_grads: bool = False) -> Callable[..., tuple]:
  """train_step(state, batch) -> (new state, metrics) [, grads]: one optimizer step, to be jitted.

  graphdef: of `nnx.split(model, nnx.Param, ...)` (Trainer.graphdef). state: the train state (module
  docstring). batch: global arrays {"audio": f32[b, samples], "frames": u8[b, t, h, w, 3]} (frames only when
  a pair reads the video). metrics: f32[] scalars: "loss", the contrastive loss's terms and top-1
  accuracies, "learning_rate", "grad_norm", "temperature", "mix_weight". grads (with return_grads, for
  tests): the loss's gradient, in the structure of state["params"].
  """
  frontend = frontend_lib.from_config(config.audio)
  pairs = _pairs(config)
  needed = _model_inputs_needed(config)  # The model inputs the pairs read: "logmel", "logmel2", "video", ...
  _, train_key = from_config.keys(config.seed)

  def train_step(state: dict, batch: dict):
    # Step s's randomness is fold_in(train_key, s): independent of the mesh and the process count, and a
    # resumed run draws exactly what the uninterrupted run would have.
    key = jax.random.fold_in(train_key, state["step"])
    params = state["params"]
    if "log_inv_temperature" in params:
      # Clipped on the way in too: a checkpoint of the code that clamped only the temperature's use may hold
      # a parameter past the clamp (outside the gradient path, so no tie-splitting of the gradient).
      params = dict(params, log_inv_temperature=jnp.minimum(params["log_inv_temperature"],
                                                            MAX_LOG_INV_TEMPERATURE))

    # Frontend and augmentation (no parameters, so outside the gradient): gain, mixing with partner clips
    # (moved between devices by augment.partner_rows), log-mel, SpecAugment, frame crops and flips.
    views = augment_lib.augment_batch(key, batch, config.augment, frontend=frontend, mesh=mesh,
                                      second_view="logmel2" in needed)

    def loss_fn(params):
      # BatchNorm statistics enter as state, not as parameters: the forward pass updates them (train=True)
      # and they leave as an output, never differentiated.
      model = nnx.merge(graphdef, params["model"], state["batch_stats"])
      embeddings = model({k: views[k] for k in sorted(needed)}, train=True)  # {input: f32[b, embed_dim]}
      if "log_inv_temperature" in params:
        # Kept <= MAX_LOG_INV_TEMPERATURE below, so this is >= MIN_TEMPERATURE and has a gradient.
        temperature = jnp.exp(-params["log_inv_temperature"])
      else:
        temperature = config.loss.temperature
      loss, metrics = losses.contrastive_loss(embeddings, pairs, temperature, mesh=mesh, axis=sharding.DATA_AXIS,
                                              impl=config.loss.impl, tile_size=config.loss.tile_size,
                                              transit_dtype=config.loss.transit_dtype)
      metrics = dict(metrics, temperature=jnp.asarray(temperature, jnp.float32))
      _, _, batch_stats = nnx.split(model, nnx.Param, ...)
      return loss, (metrics, nnx.to_pure_dict(batch_stats))

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)

    # The optimizer (avcl.optim: AdamW or LARS, weight decay on kernels only) updates exactly `params`.
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    params = optax.apply_updates(params, updates)
    if "log_inv_temperature" in params:
      # The clamp is on the parameter, not on its use: a clamp on the use has zero gradient past it, so a
      # parameter pushed past it could never come back.
      params = dict(params, log_inv_temperature=jnp.minimum(params["log_inv_temperature"],
                                                            MAX_LOG_INV_TEMPERATURE))
    new_state = {"params": params, "batch_stats": batch_stats, "opt_state": opt_state,
                 "step": state["step"] + 1}
    metrics = dict(metrics, loss=loss, mix_weight=jnp.mean(views["mix_weight"]),
                   learning_rate=schedule(state["step"]), grad_norm=optax.global_norm(grads))
    if return_grads:
      return new_state, metrics, grads
    return new_state, metrics

  return train_step


# ---------------------------------------------------------------------------------------------------------
# Input.
# ---------------------------------------------------------------------------------------------------------
def batch_keys(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Batch entries the step reads: audio always, frames only when a pair uses the video."""
  return ("audio", "frames") if "video" in _model_inputs_needed(config) else ("audio",)


def make_train_batches(config: ml_collections.ConfigDict, local_batch_size: int, *, start_step: int
                       ) -> Iterator[dict[str, np.ndarray]]:
  """This process's slice of every global batch, as numpy: {"audio": f32[b, samples], "frames": u8[...]}.

  Reads WORKDIR-independent data at config.data.root/pretrain. The stream depends only on config.seed and
  the process (never on `start_step`): a run resumed at `start_step` skips the start_step * local_batch_size
  examples the interrupted run consumed, so it sees exactly the batches the uninterrupted run would have.
  Skipping reads those records again without decoding them (input.make_dataset's skip_examples).
  """
  pretrain = paths.join(config.data.root, "pretrain")
  if paths.is_remote(pretrain):  # gs:// and other remote roots: list through TensorFlow's file system.
    tf = tf_cpu.import_tf()
    files = sorted(tf.io.gfile.glob(paths.join(pretrain, "train-*-of-*.tfrecord")))
    if not files:
      raise FileNotFoundError(f"no train-*-of-*.tfrecord shards in {pretrain}")
  else:
    files = schema.list_shards(pretrain, "train")
  ds = input_lib.make_dataset(
      files, batch_size=local_batch_size, train=True, clip_seconds=config.data.clip_seconds,
      sample_rate=config.audio.sample_rate, fps=config.data.fps, frame_size=config.data.frame_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      seed=config.seed, shuffle_buffer=config.data.shuffle_buffer,
      video_random_crop=config.data.video_random_crop, video_flip=config.data.video_flip,
      skip_examples=start_step * local_batch_size)
  keys = batch_keys(config)
  for batch in ds.as_numpy_iterator():
    yield {k: batch[k] for k in keys}


# ---------------------------------------------------------------------------------------------------------
# Metrics and preemption.
# ---------------------------------------------------------------------------------------------------------
class MetricWriter:
  """TensorBoard scalars in WORKDIR and a console line, from process 0 only."""

  def __init__(self, workdir: str, enabled: bool):
    self.enabled = enabled
    self._writer = None
    if enabled:
      tf = tf_cpu.import_tf()  # TensorBoard's writer; TF must never take an accelerator from JAX.
      self._tf = tf
      self._writer = tf.summary.create_file_writer(os.fspath(workdir))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self.enabled:
      return
    with self._writer.as_default():
      for name, value in scalars.items():
        self._tf.summary.scalar(name, value, step=step)
    self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()


class PreemptionWatcher:
  """Did this run get SIGTERM (how TPU/VM preemption arrives)?

  One process: a Python handler sets a flag that the loop reads between steps. Several processes: JAX's
  preemption sync service (started by jax.distributed.initialize) catches SIGTERM on any process and
  agrees on a step at which all processes save together; `should_stop(step)` must then be called on every
  process at every step.
  """

  def __init__(self):
    self._flag = threading.Event()
    self._multi = jax.process_count() > 1
    self._previous = None
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self._flag.set()

  def should_stop(self, step: int) -> bool:
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()

  def restore(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _quiet_orbax_logs() -> None:
  """Orbax logs every save at INFO in dozens of lines; keep its warnings, drop the rest."""
  handler = logging.get_absl_handler()
  if not any(getattr(f, "_avcl_orbax", False) for f in handler.filters):
    def keep(record):
      return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname
    keep._avcl_orbax = True  # pylint: disable=protected-access
    handler.addFilter(keep)


def _check_finite(step: int, metrics: dict[str, float], last_saved: int | None) -> None:
  bad = {k: metrics[k] for k in ("loss", "grad_norm") if k in metrics and not math.isfinite(metrics[k])}
  if bad:
    what = ", ".join(f"{k}={v}" for k, v in bad.items())
    kept = (f"the last good checkpoint is step {last_saved}" if last_saved is not None
            else "no checkpoint was saved")
    raise NonFiniteLossError(f"non-finite {what} at step {step}: stopping; {kept} (nothing later is saved)")


# ---------------------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------------------
def _check_config(workdir: epath.Path, config: ml_collections.ConfigDict, start: int | None, *,
                  allow_config_change: bool) -> dict:
  """New run: process 0 writes config.json. Resume: process 0 compares it with `config` (nothing written
  yet) and returns the diff; all processes agree on the verdict.

  With several processes only process 0 reads the file; the others learn a refusal by a broadcast and fail
  too, rather than waiting forever in the restore's collectives.
  """
  error, diff = None, {}
  if jax.process_index() == 0:
    try:
      if start is None or not (workdir / checkpoints.CONFIG_FILE).exists():
        # No finished checkpoint: nothing was trained that a different config could drift from. (A workdir
        # without config.json, from before this check, has nothing to compare with: it gets one.)
        checkpoints.write_config(workdir, config)
      else:
        diff = checkpoints.check_resume_config(workdir, config, start, allow_change=allow_config_change)
    except checkpoints.CheckpointError as e:
      error = e
  if jax.process_count() > 1:
    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if failed and error is None:
      raise checkpoints.ConfigChangedError(
          f"process 0 refused to resume {workdir} at step {start} (its log names the changed fields)")
  if error is not None:
    raise error
  return diff


def train(config: ml_collections.ConfigDict, workdir: str,
          batches: Iterable[dict[str, np.ndarray]] | None = None, *,
          allow_config_change: bool = False) -> dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its newest checkpoint) until train.num_steps.

  batches: this process's slices of the global batches (default: tf.data over config.data.root, resumed at
  the batch the interrupted run would have read next); tests pass their own. A resume compares `config` with
  WORKDIR/config.json first (checkpoints.check_resume_config): fields outside
  checkpoints.RESUMABLE_FIELDS may differ only with `allow_config_change`, and every difference is logged to
  WORKDIR/config_changes.jsonl. Returns {"step": last step, "status": "done"|"preempted", "metrics": last
  logged means, "history": [(step, metrics)] of every log line (process 0)}.
  Raises NonFiniteLossError (naming the step) when the loss or gradient norm is NaN or Inf, and
  checkpoints.ConfigChangedError (naming each field) for a refused config change.
  """
  mesh = sharding.make_mesh()
  config_validation.validate_config(config, num_devices=mesh.devices.size)
  _quiet_orbax_logs()
  local_bs = sharding.local_batch_size(config.train.global_batch_size, mesh)
  is_main = jax.process_index() == 0
  workdir = epath.Path(workdir)
  if is_main:
    workdir.mkdir(parents=True, exist_ok=True)
    # Before any manager lists the steps: a save killed midway (SIGKILL, lost host) leaves its temporary
    # folder, which orbax neither lists nor removes, and which would otherwise stay on disk for good.
    removed = checkpoints.clean_orbax_temporaries(workdir)
    if removed:
      logging.warning("Removed %d unfinished checkpoint folder(s) of killed saves: %s", len(removed),
                      ", ".join(removed))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("avcl orbax temporaries cleaned")

  # Process CPU-seconds (all threads: XLA, tf.data) from here on, i.e. without interpreter start-up and
  # imports; a resumed run adds the figure recorded at the checkpoint it resumes from.
  cpu_start = time.process_time()
  manager = checkpoints.make_manager(workdir, keep=config.train.keep_checkpoints)
  start = checkpoints.agreed_latest_step(manager)
  try:
    config_diff = _check_config(workdir, config, start, allow_config_change=allow_config_change)
    trainer = make_trainer(config, mesh)
    if start is None:
      state = trainer.init()
      start = 0
      if is_main:
        # The random-init baseline of evaluation is this exact state (docs/evaluation.md).
        checkpoints.write_initial_model(workdir, model_state(state))
      logging.info("Initialised a new run in %s", workdir)
    else:
      # A checkpoint of the older layout (module docstring) is converted on the way in.
      state = checkpoints.restore_train_state(manager, start, trainer.abstract_state)
      logging.info("Resumed %s from checkpoint step %d", workdir, start)
      if is_main and config_diff:
        # Only now that the checkpoint restored into the new config: a resume that fails before this leaves
        # config.json and config_changes.jsonl as they were.
        checkpoints.record_config_change(workdir, config, start, config_diff)
        logging.warning("Resumed %s at step %d with a changed config (logged in %s): %s", workdir, start,
                        checkpoints.CONFIG_CHANGES_FILE,
                        "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in config_diff.items()))
  except BaseException:
    manager.close()
    raise
  last_saved = start if start > 0 else None
  # {checkpoint step: CPU-seconds spent on the run up to it} (WORKDIR/cpu_seconds.json, for learning curves).
  # Steps past `start` belong to an interrupted history and are dropped; a run resumed from a checkpoint
  # without a figure (written before this file existed) cannot give totals, so it records none.
  cpu_log: dict[int, float] | None = None
  if is_main:
    recorded = checkpoints.read_cpu_seconds(workdir) if start > 0 else {}
    if start == 0 or start in recorded:
      cpu_log = {k: v for k, v in recorded.items() if k <= start}
    else:
      logging.warning("%s has no CPU-seconds for step %d: %s is not written for this run", workdir, start,
                      checkpoints.CPU_SECONDS_FILE)
  cpu_base = cpu_log.get(start, 0.0) if cpu_log is not None else 0.0

  num_steps = config.train.num_steps
  if batches is None:
    batches = make_train_batches(config, local_bs, start_step=start)
  batches = iter(batches)
  writer = MetricWriter(workdir, enabled=is_main)
  watcher = PreemptionWatcher()
  log_every, ckpt_every = config.train.log_every, config.train.checkpoint_every
  chance = math.log(config.train.global_batch_size)
  if is_main:
    logging.info("mesh %s over %d devices, %d processes; global batch %d (%d per process); "
                 "chance-level loss log(batch) = %.3f", dict(mesh.shape), mesh.devices.size,
                 jax.process_count(), config.train.global_batch_size, local_bs, chance)

  history: list[tuple[int, dict[str, float]]] = []
  window: list[dict[str, float]] = []  # metrics of the steps since the last log line
  pending: list[tuple[int, Any]] = []  # (step, device metrics) dispatched but not yet checked
  status, step = "done", start
  t_log, steps_timed, compiled = None, 0, False

  def drain(keep: int) -> None:
    """Fetches and checks the metrics of all but the `keep` newest dispatched steps."""
    while len(pending) > keep:
      s, m = pending.pop(0)
      m = {k: float(v) for k, v in jax.device_get(m).items()}
      _check_finite(s, m, last_saved)
      window.append(m)

  def save(s: int) -> None:
    nonlocal last_saved
    drain(0)  # Every step up to s is verified finite before its state is written.
    checkpoints.save(manager, s, state)
    last_saved = s
    if cpu_log is not None:
      cpu_log[s] = cpu_base + time.process_time() - cpu_start
      checkpoints.write_cpu_seconds(workdir, cpu_log)

  try:
    with jax.transfer_guard("disallow"):
      while step < num_steps:
        local = next(batches, None)
        if local is None:
          raise RuntimeError(f"the training input ended after {step} steps (train.num_steps={num_steps})")
        batch = sharding.global_batch_from_local(local, mesh)
        state, metrics = trainer.step(state, batch)
        step += 1
        pending.append((step, metrics))
        # One step stays in flight: the host prepares step s+1 while the device runs step s.
        drain(1)
        if not compiled:
          drain(0)
          compiled, t_log = True, time.perf_counter()  # Timing starts after the first (compiling) step.
        else:
          steps_timed += 1

        if step % log_every == 0 or step == num_steps:
          drain(0)
          now = time.perf_counter()
          means = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
          if steps_timed:
            step_time = (now - t_log) / steps_timed
            means.update(step_time_s=step_time, clips_per_s=config.train.global_batch_size / step_time)
          t_log, steps_timed, window = now, 0, []
          history.append((step, means))
          writer.write(step, means)
          if is_main:
            logging.info("%s", _progress_line(step, num_steps, means, chance))

        preempted = watcher.should_stop(step)
        if step % ckpt_every == 0 or step == num_steps or preempted:
          save(step)
        if preempted:
          status = "preempted"
          if is_main:
            logging.warning("SIGTERM: saved checkpoint step %d, stopping", step)
          break
      drain(0)
  finally:
    manager.wait_until_finished()
    manager.close()
    writer.close()
    watcher.restore()
  return {"step": step, "status": status, "metrics": history[-1][1] if history else {}, "history": history}


def _progress_line(step: int, num_steps: int, m: dict[str, float], chance: float) -> str:
  parts = [f"step {step}/{num_steps}", f"loss {m['loss']:.4f} (chance {chance:.3f})"]
  for k in sorted(m):
    if k.startswith("top1"):
      parts.append(f"{k} {m[k]:.3f}")
  parts.append(f"lr {m['learning_rate']:.2e}")
  if "clips_per_s" in m:
    parts.append(f"{m['clips_per_s']:.1f} clips/s, {1e3 * m['step_time_s']:.0f} ms/step")
  return " | ".join(parts)
