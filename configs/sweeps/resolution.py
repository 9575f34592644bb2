r"""Study 2: video resolution (16, 32, 64, 112 px) at equal steps and batch: downstream scores and clips/s.

    python -m launch.sweep --config configs/sweeps/resolution.py --workdir-root workdirs/study/resolution

The paper's lever is to trade video resolution for batch size: this study measures both sides of that
trade on one machine, the downstream scores and the training throughput (clips/s, from each run's
TensorBoard events, shown beside the scores by the sweep summary); study 3 measures what batch size buys.
The embedded world stores 64 px frames, so 112 px is upsampled: it costs what 112 px costs but holds no
more detail than 64 px.

Sized for: the embedded world on a 2-core CPU machine: 4 x 3 = 12 runs of 300 steps at batch 64
(~3 min at 16 px to ~7 min at 112 px each). Run a subset with `--only` (indices from `--dry-run`).
Expected (the paper's claim 2): scores change little from 112 px down to 16-32 px while throughput rises;
results, with every run, in docs/study.md.
"""
from configs.sweeps import common
from configs.sweeps.dsl import axis, product

SEEDS = (0, 1, 2)
FRAME_SIZES = (16, 32, 64, 112)


def get_config():
  return common.base_config()


def get_sweep():
  return product(axis("data.frame_size", FRAME_SIZES), axis("seed", SEEDS))


def get_plots():
  return [{"file": "score_and_throughput_vs_resolution.png", "x": "data.frame_size", "log_x": True,
           "throughput": True, "title": "video resolution (px)"}]
