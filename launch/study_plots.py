"""PNG plots of a sweep summary: per-task downstream score against one swept key, a line per value of another.

A sweep config asks for plots by defining `get_plots()`, a list of specs:

    {"file": "score_vs_batch.png",             # written next to summary.json
     "x": "train.global_batch_size",           # swept key on the x axis
     "series": "augment.mix.enabled",          # optional: one line per value of this swept key
     "log_x": True,                            # optional: log2 x axis
     "labels": {"1.0": "audio-visual"},        # optional: display names of x or series values
     "throughput": True}                       # optional: add a panel of training clips/s against x

Every run is drawn (a dot per seed) with the mean over seeds and its sample standard deviation (error bars);
the pooled log-mel baseline, when the runs scored it, is a dashed grey line.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

REQUIRED = ("file", "x")
OPTIONAL = ("series", "log_x", "labels", "throughput", "title")


def check_spec(spec: dict, swept: Sequence[str]) -> None:
  """Raises ValueError naming the bad field of a plot spec."""
  if not isinstance(spec, dict):
    raise ValueError(f"plot spec must be a dict, got {spec!r}")
  unknown = set(spec) - set(REQUIRED) - set(OPTIONAL)
  if unknown:
    raise ValueError(f"plot spec {spec.get('file')!r}: unknown fields {sorted(unknown)}")
  for field in REQUIRED:
    if field not in spec:
      raise ValueError(f"plot spec {spec!r} lacks {field!r}")
  if not str(spec["file"]).endswith(".png"):
    raise ValueError(f"plot spec file {spec['file']!r} must end in .png")
  for field in ("x", "series"):
    if field in spec and spec[field] not in swept:
      raise ValueError(f"plot spec {spec['file']!r}: {field}={spec[field]!r} is not a swept key "
                       f"(swept: {sorted(swept)})")


def _label(spec: dict, value) -> str:
  return str(spec.get("labels", {}).get(str(value), value))


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot(summary: dict, spec: dict, path: str) -> None:
  """Writes the PNG of one spec for `summary` (from `launch.sweep.summarise`) to `path`."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  done = [r for r in summary["runs"] if r["status"] == "done"]
  if not done:
    raise ValueError(f"no finished runs to plot for {spec['file']}")
  tasks = summary["tasks"]
  xkey, skey = spec["x"], spec.get("series")
  xs = sorted({r["overrides"][xkey] for r in done}, key=lambda v: (not _is_number(v), v if _is_number(v) else str(v)))
  numeric = all(_is_number(v) for v in xs)
  if numeric:
    pos = {v: (math.log2(v) if spec.get("log_x") else v) for v in xs}
  else:
    pos = {v: i for i, v in enumerate(xs)}
  series = sorted({r["overrides"][skey] for r in done}, key=str) if skey else [None]
  panels = list(tasks) + (["clips/s"] if spec.get("throughput") else [])
  cols = min(3, len(panels))
  rows = math.ceil(len(panels) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
  offsets = np.linspace(-0.03, 0.03, len(series)) * (max(pos.values()) - min(pos.values()) or 1)
  for k, panel in enumerate(panels):
    ax = axes[k // cols][k % cols]
    for s_i, s in enumerate(series):
      runs = [r for r in done if skey is None or r["overrides"][skey] == s]
      means, stds, px = [], [], []
      for x in xs:
        if panel == "clips/s":
          vals = [r["clips_per_s"] for r in runs if r["overrides"][xkey] == x and "clips_per_s" in r]
        else:
          vals = [r["scores"][panel] for r in runs if r["overrides"][xkey] == x and panel in r["scores"]]
        if not vals:
          continue
        p = pos[x] + offsets[s_i]
        ax.scatter([p] * len(vals), vals, s=10, alpha=0.4, color=f"C{s_i}")
        px.append(p)
        means.append(float(np.mean(vals)))
        stds.append(float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0)
      label = f"{'.'.join(skey.split('.')[-2:])}={_label(spec, s)}" if skey else None
      ax.errorbar(px, means, yerr=stds, marker="o", capsize=3, color=f"C{s_i}", label=label)
    ref = summary.get("reference", {}).get("logmel", {})
    if panel in ref:
      ax.axhline(ref[panel], color="grey", linestyle="--", linewidth=1, label="log-mel baseline")
    metric = next((r["metrics"].get(panel) for r in done if panel in r.get("metrics", {})), None)
    ax.set_title(panel if panel == "clips/s" else f"{panel} ({metric})" if metric else panel, fontsize=10)
    ax.set_xticks([pos[x] for x in xs])
    ax.set_xticklabels([_label(spec, x) for x in xs], fontsize=8)
    ax.set_xlabel(xkey.rsplit(".", 1)[-1], fontsize=8)
    ax.grid(alpha=0.3)
    if k == 0 and (skey or ref):
      ax.legend(fontsize=7)
  for k in range(len(panels), rows * cols):
    axes[k // cols][k % cols].axis("off")
  n = len(done)
  fig.suptitle(f"{spec.get('title', summary.get('config', ''))}: {n} runs, mean ± std over seeds", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
