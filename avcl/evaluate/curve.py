"""Learning curves: every kept checkpoint of a run scored on the validation splits, against its step and
against the CPU-seconds training had spent to reach it, beside the fair random encoder and pooled log-mel.

`python -m avcl.evaluate --workdir W --curve [--tasks ...] [--probe linear|mlp]` (one process) writes
W/eval/curve.json, curve.md and curve.png:

  {"split": "validation", "probe": "linear", "features": "stats", "steps": [int, ...],
   "cpu_seconds": [float or null per step: W/cpu_seconds.json, null where the run did not record it],
   "tasks": {TASK: {"metric": "accuracy"|"mAP", "n_train": int, "n_val": int,
                    "pretrained": [score per step], "random_init": float, "logmel": float}},
   "mean": {"pretrained": [mean over tasks per step], "random_init": float, "logmel": float}}

Scores are in [0, 1]. Each is the validation score of the probe (trained on the training split) whose
hyperparameters were picked on that same validation split: optimistic by that choice, equally for every
column, and never touching the test split, so a curve can guide choices that the test split then judges.
Embeddings, probes and the random-init baseline (the run's step-0 model with BatchNorm statistics
estimated on each task's training clips) are those of `avcl.evaluate.runner.evaluate`: the score of a step equals
the `val_score` that evaluate writes to details.json for that checkpoint.
"""
from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence

import matplotlib
import numpy as np

from avcl import checkpoints
from avcl.evaluate import config as eval_config
from avcl.evaluate import embed as embed_lib
from avcl.evaluate import probes, report, runner
from data_pipeline import paths

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position  (after the backend)

log = logging.getLogger(__name__)
SPLITS = ("train", "validation")
BASELINES = eval_config.BASELINES


def _scores(embedders: dict, examples: dict, task, probe: str, config, progress: bool) -> dict[str, float]:
  """{embedder name: validation score of the probe picked on validation} for one task."""
  e = config.eval
  feats, labels = {}, {}
  for split in SPLITS:
    feats[split], labels[split] = embed_lib.embed_examples(
        embedders, examples[split], multi_label=task.multi_label, num_classes=task.num_classes,
        group=max(e.batch_size, 64), total=len(examples[split]), desc=f"{task.name}/{split} embed",
        progress=progress)
  out = {}
  for name in embedders:
    kwargs = {"hidden": int(e.mlp_hidden)} if probe == "mlp" else {}
    if probe == "linear" and feats["train"][name].size > runner.FULL_BATCH_LIMIT:
      kwargs["optimizer"] = "adam"
    val = probes.Split(feats["validation"][name], labels["validation"])
    # The validation split stands in for the test split: the curve never reads test.
    r = probes.run_probe(probe, probes.Split(feats["train"][name], labels["train"]), val, val,
                         num_classes=task.num_classes, multi_label=task.multi_label, seed=int(config.seed),
                         progress=progress, desc=f"{task.name}/{name} {probe} probe", **kwargs)
    out[name] = float(r.val_score)
  return out


def learning_curve(workdir: str, config=None, tasks: Sequence[str] | None = None, *, probe: str | None = None,
                   progress: bool = True, print_table: bool = True) -> dict:
  """Scores every checkpoint kept in `workdir` on the validation splits; writes WORKDIR/eval/curve.*.

  `config`: overrides the run's config.json for the `eval` and `data` fields (its `model` and `audio` must
  match). Returns the curve.json dict.
  """
  run_config = checkpoints.load_config(workdir)
  if config is None:
    config = run_config
  else:
    runner.check_same_architecture(config, run_config, where=f"{workdir}/config.json")
  config = eval_config.with_eval_defaults(config)
  e = config.eval
  eval_config.validate_eval_config(e)
  probe = probe or e.probe
  if probe not in probes.PROBES:
    raise ValueError(f"probe must be one of {sorted(probes.PROBES)}, got {probe!r}")
  manager = checkpoints.make_manager(workdir, read_only=True)
  steps = sorted(manager.all_steps())
  manager.close()
  if not steps:
    raise checkpoints.CheckpointError(f"no finished checkpoint in {workdir}/{checkpoints.CHECKPOINT_DIR}")
  cpu = checkpoints.read_cpu_seconds(workdir)
  task_list = runner.resolve_tasks(list(tasks or e.tasks), config)
  # Every checkpoint embeds the same clips: read them once.
  examples = {t.name: {s: list(t.examples(s)) for s in SPLITS} for t in task_list}

  curve = {"split": "validation", "probe": probe, "features": e.features, "steps": steps,
           "cpu_seconds": [cpu.get(s) for s in steps], "tasks": {}, "mean": {}}
  initial = runner.initial_model(run_config, workdir) if "random_init" in e.baselines else None
  for task in task_list:
    ex = examples[task.name]
    embedders = {}
    if initial is not None:
      embedders["random_init"] = embed_lib.Embedder(
          runner.fair_random_model(initial, config, task, ex["train"]), config.audio,
          **runner.embedder_kwargs(config))
    if "logmel" in e.baselines:
      embedders["logmel"] = embed_lib.LogmelStats(config.audio, batch_size=e.batch_size)
    entry = {"metric": task.metric, "n_train": len(ex["train"]), "n_val": len(ex["validation"]),
             "pretrained": []}
    if embedders:
      entry.update(_scores(embedders, ex, task, probe, config, progress))
    curve["tasks"][task.name] = entry
  for step in steps:
    model, _, _ = checkpoints.restore_model(workdir, step)
    embedder = {"pretrained": embed_lib.Embedder(model, config.audio, **runner.embedder_kwargs(config))}
    for task in task_list:
      score = _scores(embedder, examples[task.name], task, probe, config, progress)["pretrained"]
      curve["tasks"][task.name]["pretrained"].append(score)
    log.info("curve step %d: %s", step, ", ".join(f"{t} {100 * v['pretrained'][-1]:.1f}"
                                                  for t, v in curve["tasks"].items()))
  entries = list(curve["tasks"].values())
  curve["mean"]["pretrained"] = [float(np.mean([t["pretrained"][i] for t in entries])) for i in range(len(steps))]
  for b in BASELINES:
    if all(b in t for t in entries):
      curve["mean"][b] = float(np.mean([t[b] for t in entries]))
  write(curve, paths.join(workdir, "eval"))
  if print_table:
    print(markdown(curve))
  return curve


def _rows(curve: dict) -> list[tuple[str, dict]]:
  return list(curve["tasks"].items()) + [("mean", curve["mean"])]


def markdown(curve: dict) -> str:
  """Scores in percent: one row per checkpoint, then the baselines' rows."""
  names = [n for n, _ in _rows(curve)]
  lines = ["| step | CPU-s | " + " | ".join(names) + " |",
           "| ---: | ---: | " + " | ".join("---:" for _ in names) + " |"]
  for i, (step, cpu) in enumerate(zip(curve["steps"], curve["cpu_seconds"])):
    cells = [f"{100 * r['pretrained'][i]:.1f}" for _, r in _rows(curve)]
    lines.append(f"| {step} | {'' if cpu is None else f'{cpu:.0f}'} | " + " | ".join(cells) + " |")
  for b in BASELINES:
    if b in curve["mean"]:
      cells = [f"{100 * r[b]:.1f}" for _, r in _rows(curve)]
      lines.append(f"| {b} | | " + " | ".join(cells) + " |")
  n_val = ", ".join(f"{n} {t['n_val']}" for n, t in curve["tasks"].items())
  lines += ["", f"Validation scores in percent ({curve['probe']} probe on `{curve['features']}` features, its "
            "hyperparameters picked on the same validation split; accuracy, mAP for multi-label tasks) of every "
            "kept checkpoint; CPU-s: CPU-seconds of training process 0 up to that checkpoint. random_init: the "
            "run's step-0 model with BatchNorm statistics estimated on each task's training clips; logmel: mean "
            f"and std over time of the log-mel bands. Validation clips: {n_val}."]
  return "\n".join(lines)


def plot(curve: dict, path: str) -> None:
  """One row per task and the mean; left: score against step, right: against CPU-seconds."""
  rows = _rows(curve)
  fig, axes = plt.subplots(len(rows), 2, figsize=(9, 2.2 * len(rows)), squeeze=False)
  cpu = curve["cpu_seconds"]
  have_cpu = [i for i, c in enumerate(cpu) if c is not None]
  for r, (name, t) in enumerate(rows):
    for c, (xs, label) in enumerate(((curve["steps"], "step"), ([cpu[i] for i in have_cpu], "CPU-seconds"))):
      ax = axes[r, c]
      ys = [100 * y for y in t["pretrained"]]
      ys = ys if c == 0 else [ys[i] for i in have_cpu]
      if xs:
        ax.plot(xs, ys, "o-", color="#1f77b4", label="pretrained", markersize=3)
      else:
        ax.text(0.5, 0.5, "no CPU-seconds recorded", ha="center", va="center", transform=ax.transAxes)
      if "random_init" in t:
        ax.axhline(100 * t["random_init"], color="#7f7f7f", ls="--", label="random_init (fair)")
      if "logmel" in t:
        ax.axhline(100 * t["logmel"], color="#ff7f0e", ls=":", label="logmel")
      ax.set_title(f"{name} ({t['metric']}), validation" if "metric" in t else "mean over tasks, validation",
                   fontsize=8)
      ax.set_xlabel(label, fontsize=8)
      ax.set_ylabel("score (%)", fontsize=8)
      ax.tick_params(labelsize=7)
      if r == 0 and c == 0:
        ax.legend(fontsize=7)
  fig.tight_layout()
  buf = io.BytesIO()  # Through paths.write_bytes, so a gs:// workdir gets its figure too.
  fig.savefig(buf, dpi=110, format="png")
  paths.write_bytes(path, buf.getvalue())
  plt.close(fig)


def validate_curve(curve: dict) -> None:
  """Raises ValueError naming the first entry that breaks the curve.json schema (module docstring)."""
  n = len(curve["steps"])
  if n < 1 or len(curve["cpu_seconds"]) != n:
    raise ValueError(f"curve: {n} steps but {len(curve['cpu_seconds'])} cpu_seconds")
  for name, t in _rows(curve):
    if len(t["pretrained"]) != n:
      raise ValueError(f"curve.{name}.pretrained has {len(t['pretrained'])} scores for {n} steps")
    for v in t["pretrained"] + [t[b] for b in BASELINES if b in t]:
      if not (isinstance(v, float) and 0.0 <= v <= 1.0 and not math.isnan(v)):
        raise ValueError(f"curve.{name}: score {v!r} is not a float in [0, 1]")


def write(curve: dict, out_dir: str) -> dict[str, str]:
  """Writes curve.json, curve.md and curve.png into out_dir; returns their paths."""
  validate_curve(curve)
  paths.makedirs(out_dir)
  out = {k: paths.join(out_dir, f"curve.{k}") for k in ("json", "md", "png")}
  report.write_json(out["json"], curve)
  paths.write_text(out["md"], markdown(curve) + "\n")
  plot(curve, out["png"])
  return out
