r"""Study 2: video resolution x batch size at equal compute (clips seen), 3 seeds.

    python -m launch.sweep --config configs/sweeps/resolution_batch.py

Video at 16, 32, 64 and 112 px (the embedded world stores 64 px frames, so 112 px is upsampled: it costs
what 112 px costs but holds no more detail) crossed with global batch 32, 64 and 128. Every run sees the
same number of clips (CLIPS_PER_RUN, the default run's 300 steps x 64), so a larger batch takes fewer
steps; warm-up is a tenth of the steps. The sweep summary puts each run's training throughput (clips/s,
from its TensorBoard events) beside its downstream scores: the paper's trade is resolution for batch.

Sized for: the embedded world on a 2-core CPU machine: 4 x 3 x 3 = 36 runs of 19,200 clips (691,200 clips
in all). The default config (32 px, batch 64) trained at 21 clips/s on this machine while it was shared
(load average ~10); 112 px runs are slower. Run a subset with `--only` (indices from `--dry-run`).
Expected (the paper's claim 2): scores change little from 112 px down to 16-32 px while throughput rises;
results, with every run, in docs/study.md.
"""
from configs import default
from launch.sweep_utils import axis, product, zip

SEEDS = (0, 1, 2)
FRAME_SIZES = (16, 32, 64, 112)
BATCHES = (32, 64, 128)
CLIPS_PER_RUN = 300 * 64


def get_config():
  return default.get_config()


def schedule(batches, clips_per_run):
  """Batch size, steps and warm-up that keep the clips seen per run fixed."""
  steps = [clips_per_run // b for b in batches]
  return zip(axis("train.global_batch_size", batches), axis("train.num_steps", steps),
             axis("optim.warmup_steps", [max(1, s // 10) for s in steps]))


def get_sweep():
  return product(axis("data.frame_size", FRAME_SIZES), schedule(BATCHES, CLIPS_PER_RUN), axis("seed", SEEDS))
