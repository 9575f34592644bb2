r"""Study 1: audio-visual vs audio-only contrastive pretraining, equal steps and batch, 3 seeds.

    python -m launch.sweep --config configs/sweeps/av_vs_audio.py --workdir-root workdirs/study/av_vs_audio

Audio-visual: audio (log-mel) picks its own video among the batch (`loss.pairs.logmel_video=1`).
Audio-only (COLA-style): two augmented log-mel views of the same clip (`loss.pairs.logmel_logmel2=1`),
no video encoder (`model.video.name=""`). Everything else (steps, batch, optimiser, audio encoder,
augmentation, evaluation) is the study base's (configs/sweeps/common.py), so the comparison changes the
positive pair only.

Sized for: the embedded world on a 2-core CPU machine: 6 runs of 300 steps at batch 64 (~4-5 min each).
Expected (the paper's claim 1): the audio-visual encoder scores higher downstream than the audio-only one;
whether it holds here is reported, with every run, in docs/study.md.
"""
from configs.sweeps import common
from configs.sweeps.dsl import axis, product, zip

SEEDS = (0, 1, 2)


def get_config():
  return common.base_config()


def get_sweep():
  variants = zip(axis("loss.pairs.logmel_video", [1.0, 0.0]),
                 axis("loss.pairs.logmel_logmel2", [0.0, 1.0]),
                 axis("model.video.name", ["tsm_resnet", ""]))
  return product(variants, axis("seed", SEEDS))


def get_plots():
  return [{"file": "scores.png", "x": "loss.pairs.logmel_video", "title": "audio-visual vs audio-only",
           "labels": {"1.0": "audio-visual", "0.0": "audio-only"}}]
