r"""A tiny config for tests: the smallest encoders that exercise every part of the step.

    python -m avcl.main --config configs/test_tiny.py --workdir /tmp/tiny --config.data.root=DIR

Sized for: unit tests on 2 CPU cores (8 simulated devices); a step compiles in seconds. Expected: nothing
beyond running; the loss is not meant to fall in the few steps tests take.
"""
from configs import default


def get_config():
  c = default.get_config()
  c.data.clip_seconds = 0.5  # 8000 samples, 51 log-mel frames.
  c.data.fps = 4.0  # 2 frames per clip.
  c.data.frame_size = 16
  c.data.shuffle_buffer = 16
  c.audio.n_mels = 16
  c.augment.mix.distribution = "uniform"  # Same role as beta; beta sampling alone compiles ~6 s on CPU.
  c.augment.time_mask_frames = 5
  c.augment.freq_mask_bins = 2
  c.model.logmel.width = 4
  c.model.logmel.depth = 2
  c.model.video.width = 4
  c.model.video.blocks = (1,)
  c.model.embed_dim = 8
  c.model.head_hidden = 0
  c.optim.warmup_steps = 1
  c.train.global_batch_size = 16  # 2 clips per device on 8 simulated devices.
  c.train.num_steps = 6
  c.train.log_every = 2
  c.train.checkpoint_every = 2
  c.train.keep_checkpoints = 10
  c.eval.window_seconds = 0.5
  c.eval.hop_seconds = 0.5
  c.eval.batch_size = 16
  return c
