"""Downstream evaluation of a training run: embed every task, probe, compare with baselines, report.

`evaluate(workdir)` restores the run's audio encoder (`avcl.checkpoints.restore_model`), and for each task
embeds its train, validation and test splits with
  * `pretrained`: the checkpoint's audio encoder,
  * `random_init`: the fair random encoder: the exact weights training started from (WORKDIR/
    initial_model.msgpack, or rebuilt by training's own initialisation), with BatchNorm statistics
    estimated on each task's training clips (`config.eval.bn_calibration_windows`),
  * `logmel`: mean and standard deviation over time of the log-mel bands,
then fits the probe (`config.eval.probe`) on each embedding and scores it on the test split; optionally
(`config.eval.finetune`) it also fine-tunes the whole encoder (`finetuned`). It writes
`WORKDIR/eval/results.json`, `results.md`, `results.png` and `details.json`, and prints the table.

Multi-process runs: call `evaluate` on every process (as `avcl.main` does). The checkpoint restore is
collective (orbax synchronises the processes; each process restores a copy onto its own first device);
then process 0 alone embeds, probes and writes the report with plain `jax.jit` on that device (no
collective), while the others wait at a barrier until it is done and return `{}`.
"""
from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax._src import distributed  # The coordination client: the one barrier with a long timeout.
from jax.experimental import multihost_utils

from avcl import checkpoints
from avcl import train as train_lib
from avcl.evaluate import config as eval_config
from avcl.evaluate import embed as embed_lib
from avcl.evaluate import finetune as finetune_lib
from avcl.evaluate import probes, report
from avcl.evaluate import tasks as tasks_lib
from avcl.models import from_config
from data_pipeline import paths

EMBEDDINGS = ("pretrained",) + eval_config.BASELINES  # Report order.
log = logging.getLogger(__name__)
# Training features (examples x dims) above which the linear probe trains by minibatch Adam instead of
# full-batch L-BFGS (e.g. AudioSet's 2M clips); ~400 MB of float32.
FULL_BATCH_LIMIT = 100_000_000


def _flatten(cfg, prefix: str) -> dict:
  out = {}
  for k, v in cfg.items():
    if hasattr(v, "items"):
      out.update(_flatten(v, f"{prefix}.{k}"))
    else:
      out[f"{prefix}.{k}"] = tuple(v) if isinstance(v, list) else v
  return out


def check_same_architecture(config, checkpoint_config, *, where: str = "the checkpoint") -> None:
  """Errors, naming the field, when `config` describes another model or frontend than the checkpoint's."""
  for part in ("model", "audio"):
    ours = _flatten(config[part], f"config.{part}")
    theirs = _flatten(checkpoint_config[part], f"config.{part}")
    for field in sorted(set(ours) | set(theirs)):
      if field == "config.model.dtype":  # Compute dtype: weights are float32 either way.
        continue
      if ours.get(field, "<absent>") != theirs.get(field, "<absent>"):
        raise ValueError(f"architecture mismatch: {field} is {ours.get(field, '<absent>')!r} in the given "
                         f"config but {theirs.get(field, '<absent>')!r} in {where}")


def initial_model(run_config, workdir: str | None = None):
  """The AVModel a training run started from: its parameters and BatchNorm statistics at step 0.

  WORKDIR/initial_model.msgpack when the run wrote it (runs since that file was introduced); otherwise (no workdir,
  or an older run) rebuilt by training's own initialisation from `run_config.seed`, which gives the same
  bits on the backend the run trained on (on another backend, float32 rounding may differ).
  """
  graphdef, abstract = from_config.abstract_model(run_config)
  state = checkpoints.read_initial_model(workdir, abstract) if workdir is not None else None
  if state is None:
    if workdir is not None:
      log.warning("%s has no %s (a run from before it was written): rebuilding the initial model from "
                  "config.seed", workdir, checkpoints.INITIAL_MODEL_FILE)
    state = train_lib.initial_model_state(run_config)
  return nnx.merge(graphdef, state)


def fair_random_model(initial, config, task: tasks_lib.Task, train_examples=None):
  """The random-init baseline for `task`: `initial` (the run's step-0 model) with its audio encoder's
  BatchNorm statistics estimated on `config.eval.bn_calibration_windows` windows of the task's training
  clips (0: the initial statistics, mean 0 and variance 1). train_examples: the training split's examples
  when the caller holds them already (default: read from `task`)."""
  e = config.eval
  n = int(e.bn_calibration_windows)
  if n == 0:
    return initial
  sr = int(config.audio.sample_rate)
  window, hop = int(round(e.window_seconds * sr)), int(round(e.hop_seconds * sr))
  examples = task.examples("train") if train_examples is None else train_examples
  windows = embed_lib.sample_windows((ex.audio for ex in examples), window, hop, n, seed=int(config.seed))
  return embed_lib.calibrate_batch_norm(initial, config.audio, windows)


def embedder_kwargs(config) -> dict:
  e = config.eval
  return dict(window_seconds=e.window_seconds, hop_seconds=e.hop_seconds, batch_size=e.batch_size,
              layer=e.features)


def make_embedders(model, config, baselines: Sequence[str]) -> dict:
  """The embedders shared by every task: the encoder under test and the log-mel baseline (the random-init
  baseline is per task: `fair_random_model`)."""
  out = {"pretrained": embed_lib.Embedder(model, config.audio, **embedder_kwargs(config))}
  if "logmel" in baselines:
    out["logmel"] = embed_lib.LogmelStats(config.audio, batch_size=config.eval.batch_size)
  return out


def resolve_tasks(names: Sequence[str], config) -> list[tasks_lib.Task]:
  """Looks every task up before any work, so a missing dataset fails first, naming itself."""
  e = config.eval
  return [tasks_lib.get_task(n, sample_rate=config.audio.sample_rate, embedded_root=config.data.root,
                             tfds_data_dir=e.tfds_data_dir or None, audioset_dir=e.audioset_dir,
                             audioset_sample_rate=e.audioset_sample_rate,
                             max_examples=e.max_examples_per_split) for n in names]


def evaluate_model(model, config, *, step: int, out_dir: str | None, tasks: Sequence[str] | None = None,
                   probe: str | None = None, finetune: bool | None = None, progress: bool = True,
                   print_table: bool = True, initial=None) -> dict:
  """Evaluates an in-memory model; writes the report into `out_dir` (None: write nothing).

  initial: the model training started from, for the random-init baseline (`initial_model`); None rebuilds
  it from `config` by training's initialisation. Returns the results.json dict.
  """
  config = eval_config.with_eval_defaults(config)
  e = config.eval
  eval_config.validate_eval_config(e)
  probe = probe or e.probe
  finetune = e.finetune if finetune is None else finetune
  if probe not in probes.PROBES:
    raise ValueError(f"probe must be one of {sorted(probes.PROBES)}, got {probe!r}")
  task_list = resolve_tasks(list(tasks or e.tasks), config)
  shared = make_embedders(model, config, e.baselines)
  if "random_init" in e.baselines and initial is None:
    initial = initial_model(config)
  results = {"tasks": {}, "checkpoint_step": int(step)}
  details = {"checkpoint_step": int(step), "probe": probe, "tasks": {}}
  probe_kwargs = {"hidden": int(e.mlp_hidden)} if probe == "mlp" else {}
  for task in task_list:
    t0 = time.time()
    embedders = dict(shared)
    if "random_init" in e.baselines:
      embedders["random_init"] = embed_lib.Embedder(fair_random_model(initial, config, task), config.audio,
                                                    **embedder_kwargs(config))
      embedders = {k: embedders[k] for k in EMBEDDINGS if k in embedders}  # Report order.
    feats, labels = {}, {}
    for split in tasks_lib.SPLITS:
      feats[split], labels[split] = embed_lib.embed_examples(
          embedders, task.examples(split), multi_label=task.multi_label, num_classes=task.num_classes,
          group=max(e.batch_size, 64), total=task.count(split), desc=f"{task.name}/{split} embed",
          progress=progress)
    scores, task_details = {}, {"source": task.source, "n_val": int(labels["validation"].shape[0]),
                                "probes": {}}
    if any(task.skipped.values()):  # Folder tasks: unreadable files, left out and named.
      task_details["skipped"] = {s: dict(v) for s, v in task.skipped.items() if v}
      log.warning("eval %s: skipped %s unreadable file(s) (listed in details.json)", task.name,
                  ", ".join(f"{len(v)} {s}" for s, v in task.skipped.items() if v))
    for name in embedders:
      kwargs = dict(probe_kwargs)
      if probe == "linear" and feats["train"][name].size > FULL_BATCH_LIMIT:
        kwargs["optimizer"] = "adam"  # Too big for full-batch L-BFGS: minibatch Adam, lr picked too.
      r = probes.run_probe(
          probe, *(probes.Split(feats[s][name], labels[s]) for s in tasks_lib.SPLITS),
          num_classes=task.num_classes, multi_label=task.multi_label, seed=int(config.seed),
          progress=progress, desc=f"{task.name}/{name} {probe} probe", **kwargs)
      scores[name] = float(r.score)
      task_details["probes"][name] = dataclasses.asdict(r)
    if finetune:
      r = finetune_lib.finetune_task(model, config, task, progress=progress)
      scores["finetuned"] = float(r.score)
      task_details["probes"]["finetuned"] = dataclasses.asdict(r)
    results["tasks"][task.name] = {"metric": task.metric, "n_train": int(labels["train"].shape[0]),
                                   "n_test": int(labels["test"].shape[0]), "scores": scores}
    task_details["seconds"] = round(time.time() - t0, 1)
    details["tasks"][task.name] = task_details
    log.info("eval %s: %s (%.0f s)", task.name,
             ", ".join(f"{k} {100 * v:.1f}" for k, v in scores.items()), task_details["seconds"])
  if out_dir is not None:
    report.write(results, out_dir, details=details)
  if print_table:
    print(report.markdown_table(results))
  return results


def evaluate(workdir: str, config=None, tasks: Sequence[str] | None = None, *, step: int | None = None,
             probe: str | None = None, finetune: bool | None = None, progress: bool = True) -> dict:
  """Evaluates the checkpoint in `workdir` (the latest, or `step`) and writes `workdir/eval/results.*`.

  `config`: overrides the run's config.json for the `eval` and `data` fields; its `model` and `audio`
  must match the checkpoint's (an error names the first field that differs). Returns the results.json
  dict; `{}` on processes other than 0. Call it on every process (the restore is collective).
  """
  # Every process takes part in the restore (orbax synchronises processes inside it).
  model, checkpoint_config, restored_step = checkpoints.restore_model(workdir, step)
  if config is None:
    config = checkpoint_config
  else:
    check_same_architecture(config, checkpoint_config, where=f"{workdir}/config.json")
  barrier = _agreed_barrier_name()
  try:
    if jax.process_index() != 0:
      log.info("evaluate: process %d leaves evaluation to process 0", jax.process_index())
      return {}
    initial = None
    if "random_init" in eval_config.with_eval_defaults(config).eval.baselines:
      initial = initial_model(checkpoint_config, workdir)  # The run's own seed, whatever `config` says.
    return evaluate_model(model, config, step=int(restored_step), out_dir=paths.join(workdir, "eval"),
                          tasks=tasks, probe=probe, finetune=finetune, progress=progress, initial=initial)
  finally:
    _wait_for_process_zero(barrier)


def _agreed_barrier_name() -> str:
  """A barrier name of this call's own, the same on every process ("" with one process).

  Drawn by process 0 and broadcast while every process is still here (right after the collective restore):
  each call waits at a barrier of its own, as a coordination-service barrier is not reused, without a counter
  that each process would have to keep in step.
  """
  if jax.process_count() == 1:
    return ""
  nonce = multihost_utils.broadcast_one_to_all(np.int32(secrets.randbits(31)))
  return f"avcl_evaluate_done_{int(nonce)}"


def _wait_for_process_zero(barrier: str, timeout_hours: float = 24.0) -> None:
  """Holds every process until process 0 has finished evaluating.

  Without it the other processes would reach jax.distributed's shutdown barrier (minutes of timeout)
  long before process 0 is done and take the whole job down. The coordination service's barrier is
  used (not a device collective) because it can wait for hours.
  """
  if jax.process_count() == 1:
    return
  client = distributed.global_state.client
  if client is None:
    multihost_utils.sync_global_devices(barrier)
    return
  client.wait_at_barrier(barrier, int(timeout_hours * 3600 * 1000))
