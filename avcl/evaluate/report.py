"""The results report: `results.json` (schema of docs/design.md), a markdown table and a PNG figure.

results.json: {"tasks": {TASK: {"metric": "accuracy"|"mAP", "n_train": int, "n_test": int,
               "scores": {"pretrained": float, "random_init": float, "logmel": float, ...}}},
               "checkpoint_step": int}, scores in [0, 1].
Everything else the evaluation measured (validation scores, picked hyperparameters, n_val, d-prime) goes
to `details.json` beside it, so results.json keeps exactly the documented schema.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any

from data_pipeline import paths

# Column order of tables and bars: the encoder under test first, then the baselines, then extras.
KNOWN_ORDER = ("pretrained", "finetuned", "random_init", "logmel")


def validate_results(results: dict) -> None:
  """Raises ValueError naming the first entry that breaks the results.json schema."""
  if set(results) != {"tasks", "checkpoint_step"}:
    raise ValueError(f"results: top-level keys must be tasks, checkpoint_step; got {sorted(results)}")
  if not isinstance(results["checkpoint_step"], int):
    raise ValueError(f"results.checkpoint_step must be an int, got {results['checkpoint_step']!r}")
  for name, t in results["tasks"].items():
    if set(t) != {"metric", "n_train", "n_test", "scores"}:
      raise ValueError(f"results.tasks.{name}: keys must be metric, n_train, n_test, scores; got {sorted(t)}")
    if t["metric"] not in ("accuracy", "mAP"):
      raise ValueError(f"results.tasks.{name}.metric must be accuracy or mAP, got {t['metric']!r}")
    for k in ("n_train", "n_test"):
      if not isinstance(t[k], int) or t[k] < 1:
        raise ValueError(f"results.tasks.{name}.{k} must be a positive int, got {t[k]!r}")
    for model, s in t["scores"].items():
      if not isinstance(s, float) or not 0.0 <= s <= 1.0 or math.isnan(s):
        raise ValueError(f"results.tasks.{name}.scores.{model} must be a float in [0, 1], got {s!r}")


def columns(results: dict) -> list[str]:
  seen = []
  for t in results["tasks"].values():
    for k in t["scores"]:
      if k not in seen:
        seen.append(k)
  return sorted(seen, key=lambda k: (KNOWN_ORDER.index(k) if k in KNOWN_ORDER else len(KNOWN_ORDER), k))


def markdown_table(results: dict, *, title: str | None = None) -> str:
  """Scores in percent, one row per task, each with the numbers of examples it was measured on."""
  cols = columns(results)
  lines = []
  if title:
    lines += [title, ""]
  lines.append("| task | metric | n_train | n_test | " + " | ".join(cols) + " |")
  lines.append("| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in cols) + " |")
  for name, t in results["tasks"].items():
    best = max(t["scores"].values())
    cells = []
    for c in cols:
      s = t["scores"].get(c)
      cell = "" if s is None else f"{100 * s:.1f}"
      cells.append(f"**{cell}**" if s is not None and s == best else cell)
    lines.append(f"| {name} | {t['metric']} | {t['n_train']} | {t['n_test']} | " + " | ".join(cells) + " |")
  lines.append("")
  lines.append(f"Checkpoint step {results['checkpoint_step']}. Scores in percent (accuracy: top-1; mAP: "
               "macro average precision) on each task's test split; best per task in bold. "
               "random_init: the run's step-0 encoder, BatchNorm statistics estimated on the task's training "
               "clips; logmel: mean and std over time of the log-mel bands.")
  return "\n".join(lines)


def plot(results: dict, path: str, *, title: str = "") -> None:
  """Grouped bars: per task, the score of each model (pretrained and baselines)."""
  # Deferred on purpose: pyplot must load after the backend is chosen, and only when a figure is drawn.
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  cols = columns(results)
  names = list(results["tasks"])
  width = 0.8 / max(1, len(cols))
  fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(names), 3.8))
  colors = {"pretrained": "#1f77b4", "finetuned": "#9467bd", "random_init": "#7f7f7f", "logmel": "#ff7f0e"}
  for j, c in enumerate(cols):
    xs, ys = [], []
    for i, n in enumerate(names):
      if c in results["tasks"][n]["scores"]:
        xs.append(i + (j - (len(cols) - 1) / 2) * width)
        ys.append(100 * results["tasks"][n]["scores"][c])
    bars = ax.bar(xs, ys, width, label=c, color=colors.get(c))
    ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
  labels = [f"{n} ({results['tasks'][n]['metric']})\nn_train={results['tasks'][n]['n_train']}\n"
            f"n_test={results['tasks'][n]['n_test']}" for n in names]
  ax.set_xticks(range(len(names)), labels, fontsize=8)
  ax.set_ylabel("test score (%)")
  ax.set_ylim(0, 105)
  ax.legend(fontsize=8, ncols=len(cols), loc="upper center", bbox_to_anchor=(0.5, 1.13), frameon=False)
  ax.set_title(title or f"downstream evaluation, checkpoint step {results['checkpoint_step']}", fontsize=9,
               pad=24)
  fig.tight_layout()
  buf = io.BytesIO()  # Through paths.write_bytes, so a gs:// workdir gets its figure too.
  fig.savefig(buf, dpi=120, format="png")
  paths.write_bytes(path, buf.getvalue())
  plt.close(fig)


def write(results: dict, out_dir: str, *, details: dict[str, Any] | None = None) -> dict[str, str]:
  """Writes results.json, results.md, results.png (and details.json) into out_dir; returns their paths."""
  validate_results(results)
  paths.makedirs(out_dir)
  out = {k: paths.join(out_dir, f"results.{k}") for k in ("json", "md", "png")}
  write_json(out["json"], results)
  paths.write_text(out["md"], markdown_table(results) + "\n")
  plot(results, out["png"])
  if details is not None:
    out["details"] = paths.join(out_dir, "details.json")
    write_json(out["details"], details)
  return out


def write_json(path: str, obj) -> None:
  paths.write_text(path, json.dumps(obj, indent=2) + "\n")  # Whole or not at all (temp name, rename).
