r"""Study 3: mixing augmentation off / on x batch size from 32 to 1024, 3 seeds.

    python -m launch.sweep --config configs/sweeps/mixing_batch.py

Mixing (`augment.mix.enabled`, partner from the whole global batch) off and on, at global batch 32 to 1024
and equal steps. The memory-efficient tiled loss is used throughout (it computes the same loss as the
plain one) so that batch 1024 fits in this machine's memory.

Sized for: the embedded world on a 2-core, 24 GiB CPU machine; 2 x 6 x 3 = 36 runs.
Expected (the paper's claim 3): mixing helps, and helps more as the batch grows; results in docs/study.md.
"""
from configs import default
from launch.sweep_utils import axis, product

SEEDS = (0, 1, 2)


def get_config():
  c = default.get_config()
  c.loss.impl = "tiled"
  c.loss.tile_size = 256
  return c


def get_sweep():
  return product(axis("augment.mix.enabled", [False, True]),
                 axis("train.global_batch_size", [32, 64, 128, 256, 512, 1024]),
                 axis("seed", SEEDS))
