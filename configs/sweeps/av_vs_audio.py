r"""Study 1: audio-visual vs audio-only contrastive pretraining, equal steps and batch, 3 seeds.

    python -m launch.sweep --config configs/sweeps/av_vs_audio.py

Audio-visual: audio (log-mel) picks its own video among the batch (`loss.pairs.logmel_video=1`).
Audio-only (COLA-style): two augmented log-mel views of the same clip (`loss.pairs.logmel_logmel2=1`),
no video encoder (`model.video.name=""`). Everything else (steps, batch, optimiser, audio encoder,
augmentation) is the embedded config's, so the comparison changes the positive pair only.

Sized for: the embedded world on a 2-core CPU machine; 6 runs of the default schedule.
Expected (the paper's claim 1): the audio-visual encoder scores higher downstream than the audio-only one;
whether it holds here is reported, with every run, in docs/study.md.
"""
from configs import default
from launch.sweep_utils import axis, product, zip

SEEDS = (0, 1, 2)


def get_config():
  return default.get_config()


def get_sweep():
  variants = zip(axis("loss.pairs.logmel_video", [1.0, 0.0]),
                 axis("loss.pairs.logmel_logmel2", [0.0, 1.0]),
                 axis("model.video.name", ["tsm_resnet", ""]))
  return product(variants, axis("seed", SEEDS))
