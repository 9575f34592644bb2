r"""Two tiny variants of the embedded config (mixing off / on), for tests and a first look at a sweep.

    python -m launch.sweep --config configs/sweeps/tiny.py --workdir-root workdirs/sweeps/tiny

Sized for: seconds per run on one CPU core (a handful of steps, one downstream task); it checks that the
machinery runs end to end, not any claim. Expected: two workdirs, each with eval/results.json.

The encoders are test_tiny's (the smallest that still exercise every part of the step) and the partner
weight is uniform: the launcher tests start a dozen processes of this config, and on a 2-core AMD EPYC
(2026-12-03) a 2-process, 4-step run took 32.9 s with these against 60.7 s with the default encoders and
beta weights (one run each), the difference being XLA compile time.
"""
from configs import default
from configs.sweeps.dsl import axis


def get_config():
  c = default.get_config()
  c.train.global_batch_size = 8
  c.train.num_steps = 4
  c.train.log_every = 1
  c.train.checkpoint_every = 2
  c.optim.warmup_steps = 1
  c.data.shuffle_buffer = 16
  c.data.frame_size = 16
  c.data.clip_seconds = 1.0
  c.augment.mix.distribution = "uniform"  # Beta sampling alone compiles ~6 s on CPU (configs/test_tiny.py).
  c.model.logmel.width = 4
  c.model.logmel.depth = 2
  c.model.video.width = 4
  c.model.video.blocks = (1,)
  c.model.embed_dim = 16
  c.model.head_hidden = 0
  c.eval.tasks = ("keyword",)
  c.eval.batch_size = 16
  c.eval.window_seconds = 1.0
  c.eval.hop_seconds = 1.0
  c.eval.baselines = ()
  return c


def get_sweep():
  return axis("augment.mix.enabled", [False, True])
