r"""What the three study sweeps share: the base config and the equal-clips schedule.

Every study run starts from configs/default.py with two changes: 300 steps at batch 64 (STUDY_CLIPS) instead
of 600, and the downstream evaluation scores the pooled log-mel baseline beside the pretrained encoder but not
the randomly initialised encoder (that row costs as much as the pretrained one and does not depend on what a
study varies; README's main run reports it).
"""
from configs import default
from configs.sweeps.dsl import axis, zip

# Clips seen by a run of the studies: 300 steps at the default batch of 64 (12 passes over the 1600
# pretraining clips), half the default run's 600 steps, so that the three studies fit one session on a
# 2-core CPU machine.
STUDY_CLIPS = 300 * 64


def base_config():
  c = default.get_config()
  c.train.num_steps = STUDY_CLIPS // c.train.global_batch_size
  c.optim.warmup_steps = c.train.num_steps // 10
  c.eval.baselines = ("logmel",)
  # The protocol docs/study.md was measured with (before the default became "stats" over 1.5 s windows).
  c.eval.features = "pooled"
  c.eval.window_seconds = 2.0
  c.eval.hop_seconds = 1.0
  return c


def schedule(batches, clips_per_run):
  """Batch size, steps and warm-up (a tenth of the steps) that keep the clips seen per run fixed."""
  steps = [clips_per_run // b for b in batches]
  return zip(axis("train.global_batch_size", batches), axis("train.num_steps", steps),
             axis("optim.warmup_steps", [max(1, s // 10) for s in steps]))
