r"""Study 3: mixing augmentation off / on x batch size from 32 to 1024 at equal compute, 3 seeds.

    python -m launch.sweep --config configs/sweeps/mixing_batch.py

Mixing (`augment.mix.enabled`, partner from the whole global batch) off and on, at global batch 32, 64,
128, 256, 512 and 1024. Every run sees the same number of clips (CLIPS_PER_RUN, about ten passes over the
default world's 1600 pretraining clips), so batch 1024 takes 16 steps and batch 32 takes 512; warm-up is a
tenth of the steps. Equal steps instead would give the large batches up to 32 times the data (and the
compute), mixing the batch's effect with the data's. The memory-efficient tiled loss is used throughout
(it computes the same loss as the plain one).

Sized for: the embedded world on a 2-core, 24 GiB CPU machine: 2 x 6 x 3 = 36 runs of 16,384 clips
(589,824 clips in all). Batch 1024 with the tiled loss ran at 14-17 clips/s (61-71 s per step) on this machine
while it was shared (load average ~12). Run a subset with `--only` (indices from `--dry-run`).
Expected (the paper's claim 3): mixing helps, and helps more as the batch grows; results in docs/study.md.
"""
from configs import default
from configs.sweeps.resolution_batch import schedule
from launch.sweep_utils import axis, product

SEEDS = (0, 1, 2)
BATCHES = (32, 64, 128, 256, 512, 1024)
CLIPS_PER_RUN = 16384


def get_config():
  c = default.get_config()
  c.loss.impl = "tiled"
  c.loss.tile_size = 256
  return c


def get_sweep():
  return product(axis("augment.mix.enabled", [False, True]), schedule(BATCHES, CLIPS_PER_RUN),
                 axis("seed", SEEDS))
