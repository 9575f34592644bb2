r"""Study 2: video resolution x batch size (low-resolution video buys a larger batch), 3 seeds.

    python -m launch.sweep --config configs/sweeps/resolution_batch.py

Video at 16, 32, 64 and 112 px (the embedded world stores 64 px frames, so 112 px is upsampled: it costs
what 112 px costs, but holds no more detail) crossed with global batch 32, 64 and 128, at equal steps.
The sweep summary puts each run's training throughput (clips/s, from its TensorBoard events) beside its
downstream scores.

Sized for: the embedded world on a 2-core CPU machine; 4 x 3 x 3 = 36 runs.
Expected (the paper's claim 2): downstream scores change little from 112 to 16-32 px while throughput
rises, so at a fixed budget low resolution with a larger batch wins; results in docs/study.md.
"""
from configs import default
from launch.sweep_utils import axis, product

SEEDS = (0, 1, 2)


def get_config():
  return default.get_config()


def get_sweep():
  return product(axis("data.frame_size", [16, 32, 64, 112]),
                 axis("train.global_batch_size", [32, 64, 128]),
                 axis("seed", SEEDS))
