r"""Run every variant of a sweep config, one after another, each in its own workdir; summarise the results.

A sweep config is an ordinary config file (`get_config()`, the base of every run) that also defines
`get_sweep()`, the list of override dicts (built with `configs.sweeps.dsl.product` / `zip` / `axis`).

    python -m launch.sweep --config configs/sweeps/tiny.py --dry-run        # list runs and commands
    python -m launch.sweep --config configs/sweeps/tiny.py                  # run them here
    python -m launch.sweep --config configs/sweeps/tiny.py --summary-only   # table from results so far
    python -m launch.sweep --config configs/sweeps/resolution.py --backend tpu \
        --name avcl-v4 --zone us-central2-b --accelerator-type v4-32 --workdir-root gs://BUCKET/sweeps

Run `i` goes to `WORKDIR_ROOT/<name>`, the name built from its overrides (`frame_size=16,seed=0`). A run
whose `eval/results.json` already exists is skipped, so re-running a sweep resumes it. A failed run is
reported and the sweep goes on (`--stop-on-failure` to stop); the exit status is non-zero if any failed.
A preempted run (exit status 75, avcl.exit_codes.PREEMPTED: SIGTERM, checkpoint saved) is neither: the
sweep stops there and exits 75, and re-running the sweep resumes that run from its checkpoint.
At the end the results (`WORKDIR/eval/results.json`) are gathered into `WORKDIR_ROOT/summary.json` and a
table, with mean and standard deviation over seeds when `seed` is one of the swept keys.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from configs.sweeps import dsl as sweep_dsl
from data_pipeline import paths, tf_cpu
from launch import common, local, procs, study_plots

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_INFO = "sweep_run.json"  # Written by this launcher into each run's workdir.
# Baseline scores of results.json that the summary carries beside the tabulated score, as reference rows.
REFERENCE_SCORES = ("logmel", "random_init")


def load_sweep(config_path: str) -> list[dict[str, Any]]:
  """Imports the config file and returns its `get_sweep()` (checked: a non-empty list of dicts)."""
  if not os.path.isfile(config_path):
    raise ValueError(f"--config {config_path!r}: no such file")
  if REPO_ROOT not in sys.path:  # Sweep configs import configs.default and configs.sweeps.dsl.
    sys.path.insert(0, REPO_ROOT)
  spec = importlib.util.spec_from_file_location("avcl_sweep_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"--config {config_path!r} defines no get_sweep()")
  sweep = module.get_sweep()
  if not isinstance(sweep, list) or not sweep or not all(isinstance(r, dict) for r in sweep):
    raise ValueError(f"{config_path}: get_sweep() must return a non-empty list of dicts, got {sweep!r:.200}")
  return sweep


def load_plots(config_path: str, sweep: Sequence[dict]) -> list[dict]:
  """The config's `get_plots()` specs (see launch/study_plots.py), checked against the swept keys; [] if none."""
  spec = importlib.util.spec_from_file_location("avcl_sweep_config_plots", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  plots = module.get_plots() if hasattr(module, "get_plots") else []
  swept = sorted({k for run in sweep for k in run})
  for p in plots:
    study_plots.check_spec(p, swept)
  return plots


def join_path(root: str, name: str) -> str:
  return paths.join(root, name)


def _read_text(path: str) -> str | None:
  if paths.is_remote(path):  # gs:// and friends: TensorFlow's file system layer, imported only when needed.
    tf = tf_cpu.import_tf()
    return tf.io.gfile.GFile(path).read() if tf.io.gfile.exists(path) else None
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return f.read()


def _write_text(path: str, text: str) -> None:
  if paths.is_remote(path):
    tf = tf_cpu.import_tf()
    with tf.io.gfile.GFile(path, "w") as f:
      f.write(text)
    return
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def read_results(workdir: str) -> dict | None:
  text = _read_text(join_path(workdir, "eval/results.json"))
  return None if text is None else json.loads(text)


def read_scalars(workdir: str, tag: str) -> list[tuple[int, float]]:
  """(step, value) of every scalar `tag` in the TensorBoard events directly in `workdir` (process 0's)."""
  tf = tf_cpu.import_tf()
  out = []
  for path in sorted(tf.io.gfile.glob(join_path(workdir, "events.out.tfevents.*"))):
    for event in tf.compat.v1.train.summary_iterator(path):
      for v in event.summary.value:
        if v.tag == tag:  # tf.summary.scalar (TF2) stores a tensor; older writers a simple_value.
          value = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
          out.append((int(event.step), value))
  return out


def read_run_info(workdir: str) -> dict:
  """What the sweep launcher recorded about a run it made (`sweep_run.json`): wall time, exit status."""
  text = _read_text(join_path(workdir, RUN_INFO))
  return {} if text is None else json.loads(text)


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
  mean = sum(xs) / len(xs)
  # Sample standard deviation (n - 1): the spread a further seed would show; 0 for a single run.
  std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
  return mean, std


def summarise(sweep: Sequence[dict], names: Sequence[str], root: str, score: str = "pretrained") -> dict:
  """Per-run rows (overrides, checkpoint step, `score` per task) and rows grouped over `seed`."""
  runs = []
  tasks: list[str] = []
  for run, name in zip(sweep, names):
    res = read_results(join_path(root, name))
    row = {"name": name, "overrides": dict(run), "status": "missing", "scores": {}, "metrics": {}}
    info = read_run_info(join_path(root, name))
    for k in ("wall_s", "exit_status"):
      if k in info:
        row[k] = info[k]
    if info.get("exit_status", 0) == common.PREEMPTED:
      row["status"] = "preempted"  # Stopped with a checkpoint; the next sweep run resumes it.
    elif info.get("exit_status", 0) != 0:
      row["status"] = "failed"
    speeds = [v for _, v in read_scalars(join_path(root, name), "clips_per_s")] if res is not None else []
    if speeds:  # Training throughput (compilation excluded), the mean of the logged values.
      row["clips_per_s"] = sum(speeds) / len(speeds)
    if res is not None:
      row["status"] = "done"
      row["checkpoint_step"] = res.get("checkpoint_step")
      for task, t in res.get("tasks", {}).items():
        for other, value in t.get("scores", {}).items():
          if other in REFERENCE_SCORES and other != score:
            row.setdefault("reference", {}).setdefault(other, {})[task] = value
        if score in t.get("scores", {}):
          row["scores"][task] = t["scores"][score]
          row["metrics"][task] = t.get("metric")
          if task not in tasks:
            tasks.append(task)
    runs.append(row)
  groups: dict[str, dict] = {}
  for row in runs:
    point = {k: v for k, v in row["overrides"].items() if k != "seed"}
    key = json.dumps(point, sort_keys=True, default=str)
    g = groups.setdefault(key, {"overrides": point, "seeds": [], "runs": [], "scores": {}, "speeds": []})
    g["runs"].append(row["name"])
    if row["status"] == "done":
      g["seeds"].append(row["overrides"].get("seed"))
      if "clips_per_s" in row:
        g["speeds"].append(row["clips_per_s"])
      for task, s in row["scores"].items():
        g["scores"].setdefault(task, []).append(s)
  grouped = []
  for g in groups.values():
    g["mean"], g["std"] = {}, {}
    for task, xs in g["scores"].items():
      g["mean"][task], g["std"][task] = _mean_std(xs)
    if g["speeds"]:
      g["clips_per_s"] = _mean_std(g["speeds"])[0]
    grouped.append(g)
  reference: dict[str, dict[str, float]] = {}
  for name in REFERENCE_SCORES:  # Baselines do not depend on the swept keys: their mean over every run.
    per_task: dict[str, list[float]] = {}
    for row in runs:
      for task, v in row.get("reference", {}).get(name, {}).items():
        per_task.setdefault(task, []).append(v)
    if per_task:
      reference[name] = {task: _mean_std(xs)[0] for task, xs in per_task.items()}
      reference[name + "_spread"] = {task: max(xs) - min(xs) for task, xs in per_task.items()}
  return {"score": score, "tasks": tasks, "runs": runs, "grouped": grouped, "reference": reference}


def format_table(summary: dict) -> str:
  """Markdown: one row per run, then (when seeds repeat) one row per point with mean ± std (n)."""
  tasks = summary["tasks"]
  def speed(x):
    return f"{x['clips_per_s']:.1f}" if "clips_per_s" in x else "-"

  lines = [f"| run | status | step | wall s | clips/s | {' | '.join(tasks)} |", "|" + " --- |" * (5 + len(tasks))]
  for r in summary["runs"]:
    cells = [f"{r['scores'][t]:.3f}" if t in r["scores"] else "-" for t in tasks]
    lines.append(f"| {r['name']} | {r['status']} | {r.get('checkpoint_step', '-')} | {r.get('wall_s', '-')} | "
                 f"{speed(r)} | {' | '.join(cells)} |")
  if any(len(g["runs"]) > 1 for g in summary["grouped"]):
    lines += ["", f"| point (over seeds) | n | clips/s | {' | '.join(tasks)} |", "|" + " --- |" * (3 + len(tasks))]
    for g in summary["grouped"]:
      point = ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in g["overrides"].items()) or "base"
      cells = [f"{g['mean'][t]:.3f} ± {g['std'][t]:.3f}" if t in g["mean"] else "-" for t in tasks]
      lines.append(f"| {point} | {len(g['seeds'])} | {speed(g)} | {' | '.join(cells)} |")
  refs = [(name, summary["reference"][name]) for name in REFERENCE_SCORES if summary.get("reference", {}).get(name)]
  if refs:
    lines += ["", f"| baseline (mean over runs) | {' | '.join(tasks)} |", "|" + " --- |" * (1 + len(tasks))]
  for name, ref in refs:
    spread = summary["reference"].get(name + "_spread", {})
    cells = [f"{ref[t]:.3f}" + (f" (range {spread[t]:.3f})" if spread.get(t) else "") if t in ref else "-"
             for t in tasks]
    lines.append(f"| {name} | {' | '.join(cells)} |")
  return "\n".join(lines)


def write_summary(summary: dict, root: str) -> None:
  _write_text(join_path(root, "summary.json"), json.dumps(summary, indent=1, default=str))
  _write_text(join_path(root, "summary.md"), format_table(summary) + "\n")


def _local_members(a, workdir: str, overrides: dict) -> list[procs.Member]:
  log_dir = os.path.join(workdir, "logs")
  if a.num_processes > 1:
    return local.build_members(num_processes=a.num_processes, devices_per_process=a.devices_per_process,
                               config=a.config, workdir=workdir, mode=a.mode, overrides=overrides,
                               log_dir=log_dir, port=common.free_port(),
                               inherited_xla_flags=os.environ.get("XLA_FLAGS", ""))
  # One process on whatever this machine has (CPU or GPUs), in the caller's environment.
  argv = common.main_command(python=sys.executable, config=a.config, workdir=workdir, mode=a.mode,
                             overrides=overrides)
  return [procs.Member(argv=argv, env={}, log_path=os.path.join(log_dir, "process_0.log"))]


def _tpu(a, workdir: str, overrides: dict):
  from launch import tpu  # pylint: disable=import-outside-toplevel
  ns = copy.copy(a)
  ns.workdir = workdir
  ns.override = [f"{k}={common.format_value(v)}" for k, v in overrides.items()]
  ns.env = a.env
  return tpu.Tpu(ns, common.Runner(dry_run=a.dry_run))


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m launch.sweep", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  local.add_args(p, workdir=False)
  p.add_argument("--workdir-root", default=None,
                 help="Parent of the runs' workdirs (default workdirs/sweeps/<config name>).")
  p.add_argument("--backend", default="local", choices=("local", "tpu"))
  p.add_argument("--only", default=None, help="Comma list of run indices to run (see --dry-run).")
  p.add_argument("--force", action="store_true", help="Run even where eval/results.json exists.")
  p.add_argument("--stop-on-failure", action="store_true", help="Stop the sweep at the first failed run.")
  p.add_argument("--summary-only", action="store_true", help="Only gather and print the results.")
  p.add_argument("--score", default="pretrained", help="Which score of results.json to tabulate.")
  g = p.add_argument_group("local backend")
  g.add_argument("--num-processes", type=int, default=1, help="Processes per run (>1: CPU collectives).")
  g.add_argument("--devices-per-process", type=int, default=1, help="Simulated CPU devices per process.")
  g.add_argument("--timeout", type=float, default=None, help="Per-run time limit in seconds.")
  t = p.add_argument_group("tpu backend (the slice must exist and be set up: launch.tpu create/setup)")
  for flag, kw in [("--name", {}), ("--zone", {}), ("--project", {}), ("--accelerator-type", {}),
                   ("--runtime-version", {})]:
    t.add_argument(flag, default=None, **kw)
  t.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
  return p


def main(argv=None) -> int:
  p = build_parser()
  a = p.parse_args(argv)
  try:
    sweep = load_sweep(a.config)
    names = sweep_dsl.run_names(sweep)
    plots = load_plots(a.config, sweep)  # Checked now, not after hours of runs.
    base = common.parse_overrides(a.override)
    clash = sorted(set(base) & {k for run in sweep for k in run})
    if clash:
      raise ValueError(f"--override of {', '.join(clash)}: swept by {a.config}; edit the sweep instead")
    root = a.workdir_root or os.path.join(
        "workdirs", "sweeps", os.path.splitext(os.path.basename(a.config))[0])
    only = None if a.only is None else {int(i) for i in a.only.split(",")}
    if only is not None and not only <= set(range(len(sweep))):
      raise ValueError(f"--only {a.only}: indices must be in 0..{len(sweep) - 1}")
    if a.backend == "tpu" and not a.summary_only:
      if not (a.name and a.zone and a.accelerator_type):
        raise ValueError("--backend tpu needs --name, --zone and --accelerator-type")
      a.queued, a.spot, a.code, a.repo, a.ref = False, False, "local", None, "main"
  except ValueError as e:
    p.error(str(e))

  print(f"[sweep] {a.config}: {len(sweep)} runs under {root}", flush=True)
  failed, preempted = [], []
  if not a.summary_only:
    for i, (run, name) in enumerate(zip(sweep, names)):
      if only is not None and i not in only:
        continue
      workdir = join_path(root, name)
      overrides = {**base, **run}
      if a.dry_run:
        print(f"# run {i}: {name}", flush=True)
      elif not a.force and a.mode != "train" and read_results(workdir) is not None:
        print(f"[sweep] {i + 1}/{len(sweep)} {name}: results exist, skipped", flush=True)
        continue
      else:
        print(f"[sweep] {i + 1}/{len(sweep)} {name}: starting", flush=True)
      start = time.monotonic()
      if a.backend == "tpu":
        try:
          status = _tpu(a, workdir, overrides).run(wait=True, log=f"avcl-{name}.log")
        except SystemExit as e:  # Runner raises SystemExit with the failed command.
          print(f"[sweep] {e}", flush=True)
          status = 1
      else:
        members = _local_members(a, workdir, overrides)
        if a.dry_run:
          procs.print_group(members)
          continue
        status = procs.run_group(members, timeout_s=a.timeout)
      if a.dry_run:
        continue
      seconds = time.monotonic() - start
      _write_text(join_path(workdir, RUN_INFO), json.dumps(
          {"config": a.config, "overrides": overrides, "wall_s": round(seconds, 1), "exit_status": status},
          indent=1, default=str))
      outcome = {0: "ok", common.PREEMPTED: "PREEMPTED (checkpoint saved; rerun the sweep to resume it)"}.get(
          status, f"FAILED ({status})")
      print(f"[sweep] {i + 1}/{len(sweep)} {name}: {outcome} in {seconds:.0f} s", flush=True)
      if status == common.PREEMPTED:
        # Neither finished nor failed: the next sweep run resumes it from its checkpoint (a preemption
        # usually takes the whole machine, so the remaining runs are not started on it now).
        preempted.append(name)
        break
      if status != 0:
        failed.append(name)
        if a.stop_on_failure:
          break
  if a.dry_run:
    return 0
  summary = summarise(sweep, names, root, score=a.score)
  summary["config"] = a.config
  summary["failed"] = failed
  summary["preempted"] = preempted
  write_summary(summary, root)
  print(format_table(summary), flush=True)
  if not paths.is_remote(root) and any(r["status"] == "done" for r in summary["runs"]):
    for spec in plots:
      path = join_path(root, spec["file"])
      study_plots.plot(summary, spec, path)
      print(f"[sweep] wrote {path}", flush=True)
  if failed:
    print(f"[sweep] {len(failed)} failed: {', '.join(failed)}", flush=True)
  if preempted:
    print(f"[sweep] preempted: {', '.join(preempted)}; run the same command again to resume", flush=True)
  return 1 if failed else common.PREEMPTED if preempted else 0


if __name__ == "__main__":
  sys.exit(main())
