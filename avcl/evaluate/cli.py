"""`python -m avcl.evaluate --workdir W [--tasks ... | folder:PATH] [--probe linear|mlp] [--step N | --curve]`.

Evaluates a training run's checkpoint on downstream tasks and writes W/eval/results.{json,md,png}; with
--curve, scores every kept checkpoint on the validation splits and writes W/eval/curve.{json,md,png}.
"""
from __future__ import annotations

import argparse
import logging
import sys

import jax

from avcl import checkpoints, host_memory
from avcl.evaluate import config as eval_config
from avcl.evaluate import curve, runner
from avcl.evaluate import tasks as tasks_lib


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m avcl.evaluate",
      description="Evaluate an avcl checkpoint on downstream tasks with probes on frozen embeddings, beside "
                  "a randomly initialised encoder and pooled log-mel features. Writes WORKDIR/eval/"
                  "results.json, results.md, results.png and details.json, and prints the table.",
      epilog=f"Tasks: embedded-world {', '.join(tasks_lib.EMBEDDED_TASKS)}; TFDS (prepared beforehand) "
             f"{', '.join(sorted(tasks_lib.TFDS_TASKS))}; audioset, audioset_unbalanced (with "
             "--audioset_dir); folder:PATH for your own recordings, one subfolder per class (docs/evaluation.md). "
             "Evaluation runs on JAX process 0 only.")
  p.add_argument("--workdir", required=True, help="training run directory (config.json, checkpoints/)")
  p.add_argument("--tasks", nargs="+", default=None,
                 help="tasks to evaluate, space- or comma-separated (default: the run's config.eval.tasks)")
  p.add_argument("--probe", choices=eval_config.PROBES, default=None, help="default: config.eval.probe")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--finetune", action="store_true", help="also fine-tune the whole encoder (slow on CPU)")
  p.add_argument("--curve", action="store_true",
                 help="learning curve: score every kept checkpoint on the validation splits against its step "
                      "and the run's CPU-seconds, beside the baselines; writes WORKDIR/eval/curve.{json,md,png}")
  p.add_argument("--data_root", default=None, help="embedded world root (default: the run's data.root)")
  p.add_argument("--tfds_data_dir", default=None, help="TFDS data dir holding prepared datasets")
  p.add_argument("--audioset_dir", default=None, help="directory of AudioSet DMVR TFRecords")
  p.add_argument("--max_examples_per_split", type=int, default=None, help="cap per split (0: all)")
  p.add_argument("--no_progress", action="store_true", help="no progress bars")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.curve and (args.step is not None or args.finetune):
    raise SystemExit("error: --curve scores every kept checkpoint without fine-tuning: drop --step/--finetune")
  logging.basicConfig(level=logging.WARNING, format="%(message)s")
  logging.getLogger("avcl").setLevel(logging.INFO)  # Our progress lines, without orbax's INFO chatter.
  # On the CPU backend XLA's buffers come from the C allocator: keep freed pages mapped (avcl/host_memory.py).
  try:
    allocator = host_memory.apply(platform=jax.default_backend())
  except ValueError as e:  # A bad $AVCL_HOST_MALLOC.
    raise SystemExit(f"error: {e}") from None
  logging.getLogger("avcl").info("host allocator policy %s", allocator)
  config = None
  overrides = {"data.root": args.data_root, "eval.tfds_data_dir": args.tfds_data_dir,
               "eval.audioset_dir": args.audioset_dir,
               "eval.max_examples_per_split": args.max_examples_per_split}
  if any(v is not None for v in overrides.values()):
    config = eval_config.with_eval_defaults(checkpoints.load_config(args.workdir))
    for key, value in overrides.items():
      if value is not None:
        section, field = key.split(".")
        config[section][field] = value
  tasks = [t for arg in args.tasks for t in arg.split(",") if t] if args.tasks else None
  if args.curve:
    curve.learning_curve(args.workdir, config, tasks, probe=args.probe, progress=not args.no_progress)
    return 0
  runner.evaluate(args.workdir, config, tasks, step=args.step, probe=args.probe,
                  finetune=True if args.finetune else None, progress=not args.no_progress)
  return 0


if __name__ == "__main__":
  sys.exit(main())
