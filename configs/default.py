r"""The embedded CPU run: tiny encoders, 32 px video, pretraining in minutes on 2 CPU cores.

Run (generates the embedded world into $AVCL_DATA or ~/.cache/avcl/embedded on first use):

    python -m avcl.main --config configs/default.py --workdir workdirs/default --mode train_and_eval

Sized for: a 2-core, 24 GiB CPU machine (also runs unchanged on 8 simulated CPU devices or one GPU).
Measured (commit 1d3ec63, 2026-12-02, `--mode train_and_eval`, 1 CPU device on a 2-core machine at load
average ~5 from a test suite running beside it): pretraining 9 min 34 s wall (0.8-1.1 s per step under that
load; 593 CPU-seconds to the last of 12 checkpoints), evaluation ~3.5 min. The logged loss went from 4.29
(step 20) to 3.33 (step 600) against a chance level of log(64) = 4.16; contrastive top-1 (audio-to-video and
video-to-audio averaged) 10.4% (chance 1.6%). Test-split mean over the five tasks: pretrained 48.2, the fair
random encoder (this run's step-0 weights) 33.8, pooled log-mel 38.5 (table in README.md). An earlier
measurement on a quiet machine (2026-11-25, 3 checkpoints): ~0.58 s per step, 660 CPU-seconds.
Expected: the contrastive loss falls well below log(global_batch); the eval table shows the pretrained
encoder ahead of the fair random encoder.
"""
import os

import ml_collections

from avcl.evaluate import config as eval_config


def default_data_root() -> str:
  return os.environ.get("AVCL_DATA", os.path.join(os.path.expanduser("~"), ".cache", "avcl", "embedded"))


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # One seed for parameters, augmentation keys and tf.data shuffling.

  c.data = ml_collections.ConfigDict()
  c.data.root = default_data_root()  # Embedded world (or any dir with the same layout).
  c.data.generate_if_missing = True  # Generate the embedded world at data.root when absent.
  c.data.world_clips = 0  # Embedded world size when generated (0: the generator's default).
  c.data.world_task_clips = 0  # Task splits sized as for this many pretraining clips (0: as world_clips).
  c.data.clip_seconds = 1.5  # Seconds per training crop; audio and frames are cut at the same instant.
  c.data.fps = 5.0  # Frames per second fed to the video encoder (stored frames are subsampled).
  c.data.frame_size = 32  # Video resolution in px (the paper's lever: low resolution, large batch).
  c.data.shuffle_buffer = 1024  # Clips in the tf.data shuffle buffer (per process).
  c.data.video_random_crop = True  # Random-resized crop of frames before resizing (train only).
  c.data.video_flip = True  # Random horizontal flip of frames (train only).

  c.audio = ml_collections.ConfigDict()
  c.audio.sample_rate = 16000  # Hz; input audio must already be at this rate.
  c.audio.n_fft = 512  # FFT size (samples).
  c.audio.win_length = 400  # 25 ms window at 16 kHz.
  c.audio.hop_length = 160  # 10 ms hop at 16 kHz.
  c.audio.n_mels = 64  # Mel bands.
  c.audio.fmin = 60.0  # Lowest mel edge (Hz).
  c.audio.fmax = 7800.0  # Highest mel edge (Hz), below Nyquist.
  c.audio.mel_scale = "slaney"  # "slaney" (librosa default) or "htk".
  c.audio.log_offset = 1e-6  # log(mel_power + log_offset).
  c.audio.stft = "fft"  # STFT as "fft" (XLA's FFT) or "matmul" (windowed DFT matrix); benchmarks/frontend.py.

  c.augment = ml_collections.ConfigDict()
  c.augment.mix = ml_collections.ConfigDict()
  c.augment.mix.enabled = True  # Mix each sample with a partner from the batch (the paper's lever 2).
  # Where a clip's partner comes from (avcl/augment.py), with b clips per device and B in all:
  #   "global": another device's shard, that device drawn afresh each step; one collective-permute of b
  #     clips per device (frames as uint8), whatever the device count. One device: the whole batch.
  #   "local": the same device's b clips; no traffic.
  #   "gathered": anywhere in the global batch, the same partners on any mesh; every device gathers all
  #     B clips' waveforms and frames (memory and traffic O(B) per device): for small meshes only.
  c.augment.mix.partner = "global"
  c.augment.mix.distribution = "beta"  # Partner weight ~ max_weight * Beta(alpha, alpha) or * Uniform.
  c.augment.mix.alpha = 1.0  # Beta concentration.
  c.augment.mix.max_weight = 0.5  # Partner weight stays below this, so the primary sample dominates.
  c.augment.mix.audio_domain = "waveform"  # "waveform" or "logmel" (log-mixup-exp, as in BYOL-A).
  c.augment.mix.video = True  # Mix frames with the same partner and weight.
  c.augment.gain_db = 6.0  # Random gain, uniform in [-gain_db, +gain_db] (0 disables).
  c.augment.time_masks = 2  # SpecAugment time masks per example.
  c.augment.time_mask_frames = 20  # Maximum width of a time mask (frames).
  c.augment.freq_masks = 2  # SpecAugment frequency masks per example.
  c.augment.freq_mask_bins = 8  # Maximum width of a frequency mask (mel bins).

  c.model = ml_collections.ConfigDict()
  c.model.logmel = ml_collections.ConfigDict()
  c.model.logmel.name = "cnn14"  # Log-mel encoder: "cnn14" (PANNs) or "resnet".
  c.model.logmel.width = 8  # Channels of the first block (CNN14 full size: 64).
  c.model.logmel.depth = 4  # Conv blocks (CNN14 full size: 6); for "resnet": stages.
  c.model.logmel.blocks = 2  # Residual blocks per stage ("resnet" only; ignored by cnn14).
  c.model.wave = ml_collections.ConfigDict()
  c.model.wave.name = ""  # Waveform encoder: "res1dnet31" (PANNs) or "" for none.
  c.model.wave.width = 8  # Channels of the first block (Res1dNet31 full size: 64).
  c.model.wave.depth = 4  # Residual stages of 2 blocks (Res1dNet31 full size: 7; avcl/models/res1dnet.py).
  c.model.video = ml_collections.ConfigDict()
  c.model.video.name = "tsm_resnet"  # Video encoder: TSM-ResNet (as in MMV), or "" for audio-only.
  c.model.video.width = 8  # Channels of the stem (ResNet50: 64).
  c.model.video.blocks = (1, 1, 1, 1)  # Blocks per stage (ResNet50: (3, 4, 6, 3)).
  c.model.video.bottleneck = False  # Bottleneck blocks (ResNet50: True).
  c.model.video.shift_fraction = 0.125  # Fraction of channels shifted each way in time (TSM).
  c.model.embed_dim = 128  # Projection-head output (the contrastive space).
  c.model.head_hidden = 256  # Hidden width of the 2-layer MLP head (0: linear head).
  c.model.dtype = "float32"  # Compute dtype: "float32" or "bfloat16" (parameters stay float32).
  c.model.bn_sync = True  # BatchNorm statistics over the global batch (False: per device shard).
  c.model.remat = False  # Rematerialise encoder blocks in the backward pass (saves memory, ~1.3x compute).
  # With remat: keep the input of one block in every remat_every and recompute the rest in nested groups
  # (saved activations ~1/remat_every, one more forward pass of the blocks; avcl/models/stack.py).
  c.model.remat_every = 1
  # Speed options (how the step is computed, not what: same values and gradients to float32 rounding).
  c.model.bn_backward = "custom_vjp"  # BatchNorm's backward: "custom_vjp" (hand-written) or "autodiff".
  c.model.im2col_max_positions = 4  # Convs onto 2-D maps of <= this many positions as patch matmuls (0: off).
  c.model.cpu_conv_library = "eigen"  # XLA:CPU's convolutions: "eigen" or "ynnpack" (XLA's default); CPU only.

  c.loss = ml_collections.ConfigDict()
  c.loss.pairs = ml_collections.ConfigDict()  # Weight of each InfoNCE pair "a_b" (0 disables).
  c.loss.pairs.logmel_video = 1.0  # Audio (log-mel) picks its own video.
  c.loss.pairs.wave_video = 0.0  # Audio (waveform) picks its own video.
  c.loss.pairs.logmel_wave = 0.0  # The two audio formats of the same clip (multi-format).
  c.loss.pairs.logmel_logmel2 = 0.0  # Two augmented log-mel views of the same clip (audio-only, COLA).
  c.loss.temperature = 0.1  # Softmax temperature (initial value when learned).
  c.loss.learn_temperature = False  # Learn log(1/temperature) as a parameter.
  c.loss.impl = "plain"  # "plain" (row block vs gathered batch), "tiled" or "ring" (memory-efficient).
  c.loss.tile_size = 1024  # Rows and columns per score tile for "tiled"/"ring".
  c.loss.transit_dtype = "float32"  # "bfloat16": "tiled"/"ring" scores from bf16-rounded embeddings (half the memory).

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"  # "adamw" or "lars".
  c.optim.learning_rate = 2e-3  # Peak learning rate.
  c.optim.warmup_steps = 50  # Linear warm-up steps.
  c.optim.end_learning_rate_fraction = 0.0  # Cosine decay ends at this fraction of the peak.
  c.optim.weight_decay = 1e-4  # Decoupled weight decay (not applied to biases, norms, temperature).
  c.optim.b1 = 0.9  # Adam beta1 / LARS momentum.
  c.optim.b2 = 0.999  # Adam beta2.
  c.optim.lars_trust_coefficient = 1e-3  # LARS trust ratio coefficient.
  c.optim.grad_clip_norm = 0.0  # Global-norm gradient clipping (0 disables).

  c.train = ml_collections.ConfigDict()
  c.train.global_batch_size = 64  # Clips per step over all devices and processes.
  c.train.num_steps = 600  # Optimizer steps.
  c.train.log_every = 20  # Steps between metric logs.
  # Every checkpoint is a point of the learning curve (`python -m avcl.evaluate --workdir W --curve`): 12 of
  # them, all kept (the default model's checkpoint is small).
  c.train.checkpoint_every = 50  # Steps between checkpoints.
  c.train.keep_checkpoints = 12  # Checkpoints kept on disk (the newest); older ones are deleted.

  c.eval = eval_config.defaults()  # Downstream evaluation: fields and defaults in avcl/evaluate/config.py.
  return c
