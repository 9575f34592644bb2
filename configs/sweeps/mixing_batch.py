r"""Study 3: mixing augmentation off / on x global batch 32 to 1024 at equal clips seen, 3 seeds.

    python -m launch.sweep --config configs/sweeps/mixing_batch.py --workdir-root workdirs/study/mixing_batch

Mixing (`augment.mix.enabled`, partner from the whole global batch) off and on, at global batch 32, 128,
512 and 1024. Every run sees the same number of clips (CLIPS_PER_RUN, about five passes over the 1600
pretraining clips), so batch 1024 takes 8 steps and batch 32 takes 256; warm-up is a tenth of the steps.
This is how SimCLR-style batch-size studies compare batches (equal epochs); equal steps instead would give
the large batches up to 32 times the data and the compute, mixing the batch's effect with the data's.
The memory-efficient tiled loss is used throughout (it computes the same loss as the plain one).

Sized for: the embedded world on a 2-core, 24 GiB CPU machine: 2 x 4 x 3 = 24 runs of 8,192 clips, each
~1.5 min of training (batch 1024 measured at ~94 clips/s, 10.9 s per step, on this machine) plus
evaluation. Run a subset with `--only` (indices from `--dry-run`).
Expected (the paper's claim 3): mixing helps, and helps more as the batch grows; results in docs/study.md.
"""
from configs.sweeps import common
from configs.sweeps.dsl import axis, product

SEEDS = (0, 1, 2)
BATCHES = (32, 128, 512, 1024)
CLIPS_PER_RUN = 8192


def get_config():
  c = common.base_config()
  c.loss.impl = "tiled"
  c.loss.tile_size = 256
  return c


def get_sweep():
  return product(axis("augment.mix.enabled", [False, True]), common.schedule(BATCHES, CLIPS_PER_RUN),
                 axis("seed", SEEDS))


def get_plots():
  return [{"file": "score_vs_batch.png", "x": "train.global_batch_size", "series": "augment.mix.enabled",
           "log_x": True, "title": "mixing off/on x global batch (equal clips seen)"}]
