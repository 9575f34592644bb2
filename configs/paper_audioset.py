r"""The paper's recipe at full scale: AudioSet pretraining of CNN14 (log-mel) + Res1dNet31 (waveform) audio
encoders against a low-resolution TSM-ResNet50 video encoder, with mixing, at a large global batch.

Paper: Wang, Luc, Recasens, Alayrac, van den Oord, "Multimodal Self-Supervised Learning of General Audio
Representations" (arXiv 2104.12807). Only its abstract is readable here; it fixes the levers (video helps,
low-resolution frames suffice so the batch can grow, mixing samples makes the proxy task harder and pays off
at large batch) and the result (42.4 mAP on AudioSet). Every value below says where it comes from:
  paper    the abstract;
  lineage  the same authors' multi-format paper (arXiv 2103.06508: raw waveform vs log-mel contrast),
           MMV (Alayrac et al. 2020: TSM-ResNet50 video tower), PANNs (Kong et al. 2020: CNN14,
           Res1dNet31 and their 16 kHz front end), or a public reproduction naming these encoders;
  ours     our choice where the readable sources are silent.

Run on a Cloud TPU pod slice (every host; see launch/ and README), with AudioSet converted by
`python -m data_pipeline.ingest` into $AVCL_AUDIOSET/pretrain and the DMVR AudioSet records for evaluation:

    python -m avcl.main --config configs/paper_audioset.py --workdir gs://BUCKET/avcl/paper \
        --mode train_and_eval --config.data.root=$AVCL_AUDIOSET --config.eval.audioset_dir=$AUDIOSET_DMVR

Sized for: a TPU v3-256 / v4-128 class slice (global batch 4096 in bfloat16, tiled contrastive loss).
What fits where, before renting (`python -m benchmarks.scale_check --config paper --global_batch 4096
--devices 8,64,256 --remat off,on`, 2026-12-02, XLA:CPU's per-device figure, a proxy that runs high for
bfloat16 convolutions; docs/launch.md): 64 devices need 81.70 GiB each, 19.62 with
`--config.model.remat=True`, 18.38 adding `--config.model.remat_every=2` (with remat a v4-128 holds it,
without remat a v5p-128 does, a v5e-64 does not); 256 devices need 21.99, or 6.34 with remat. The step
compiles in 22-32 s on a 2-core CPU.
Expected: the paper reports 42.4 mAP on AudioSet for its best model; we have not run this config at full
scale, so no number of ours is claimed here.
"""
import os

from configs import default


def get_config():
  c = default.get_config()

  c.data.root = os.environ.get("AVCL_AUDIOSET", os.path.expanduser("~/data/audioset"))  # ours: ingest output
  c.data.generate_if_missing = False  # ours: real data, never generate the embedded world here
  c.data.clip_seconds = 3.2  # lineage: MMV samples 32 frames at 10 fps (3.2 s)
  c.data.fps = 10.0  # lineage: MMV's 10 fps
  c.data.frame_size = 64  # paper: low resolution suffices (the exact size is not in the abstract; ours)
  c.data.shuffle_buffer = 10_000  # ours: per host
  c.data.video_random_crop = True  # lineage: MMV's spatial augmentation (random crop, flip)
  c.data.video_flip = True  # lineage: MMV

  c.audio.sample_rate = 16000  # lineage: PANNs' 16 kHz variant
  c.audio.n_fft = 512  # lineage: PANNs 16 kHz (window 512)
  c.audio.win_length = 512  # lineage: PANNs 16 kHz
  c.audio.hop_length = 160  # lineage: PANNs 16 kHz (10 ms)
  c.audio.n_mels = 64  # lineage: PANNs (64 mel bins)
  c.audio.fmin = 50.0  # lineage: PANNs 16 kHz
  c.audio.fmax = 8000.0  # lineage: PANNs 16 kHz (Nyquist)
  c.audio.mel_scale = "slaney"  # ours: librosa's default, as PANNs' torchlibrosa
  c.audio.log_offset = 1e-6  # ours

  c.augment.mix.enabled = True  # paper: mixing samples together makes the proxy task harder
  c.augment.mix.partner = "global"  # ours: partners from another device's shard (one permute, no gather)
  c.augment.mix.distribution = "beta"  # ours (the abstract gives no formula)
  c.augment.mix.alpha = 1.0  # ours
  c.augment.mix.max_weight = 0.5  # ours: the primary sample stays dominant, so its pair stays positive
  c.augment.mix.audio_domain = "waveform"  # ours: both audio formats then see the same mixture
  c.augment.mix.video = True  # ours: frames mixed with the same partner and weight
  c.augment.gain_db = 6.0  # ours
  c.augment.time_masks = 2  # ours: SpecAugment
  c.augment.time_mask_frames = 40  # ours
  c.augment.freq_masks = 2  # ours
  c.augment.freq_mask_bins = 8  # ours

  c.model.logmel.name = "cnn14"  # lineage: reproduction reports CNN14 (PANNs) over log-mel
  c.model.logmel.width = 64  # lineage: PANNs CNN14
  c.model.logmel.depth = 6  # lineage: PANNs CNN14 (6 conv blocks, 64..2048 channels)
  c.model.wave.name = "res1dnet31"  # lineage: multi-format paper / reproduction (PANNs Res1dNet31)
  c.model.wave.width = 64  # lineage: PANNs Res1dNet31
  c.model.wave.depth = 7  # lineage: PANNs Res1dNet31 (7 stages of 2 blocks)
  c.model.video.name = "tsm_resnet"  # lineage: MMV's TSM-ResNet50 video tower
  c.model.video.width = 64  # lineage: ResNet50
  c.model.video.blocks = (3, 4, 6, 3)  # lineage: ResNet50
  c.model.video.bottleneck = True  # lineage: ResNet50
  c.model.video.shift_fraction = 0.125  # lineage: TSM / MMV (1/8 of channels shifted each way)
  c.model.embed_dim = 128  # ours
  c.model.head_hidden = 256  # ours: 2-layer MLP head (SimCLR-style)
  c.model.dtype = "bfloat16"  # ours: TPU compute dtype; parameters and BN statistics stay float32
  c.model.bn_sync = True  # ours: global-batch BatchNorm statistics
  c.model.remat = False  # ours: turn on below ~96 GiB per device at 64 clips per device (docstring)
  c.model.remat_every = 1  # ours: 2 saves another 6% of memory for one more forward pass

  c.loss.pairs.logmel_video = 1.0  # paper: audio learns from video (log-mel tower)
  c.loss.pairs.wave_video = 1.0  # paper + lineage: the waveform tower learns from video too
  c.loss.pairs.logmel_wave = 1.0  # lineage: multi-format contrast of waveform and log-mel
  c.loss.pairs.logmel_logmel2 = 0.0  # ours: audio-only pair off (the study's audio-only baseline turns it on)
  c.loss.temperature = 0.1  # ours
  c.loss.learn_temperature = False  # ours
  c.loss.impl = "tiled"  # ours: never materialises a device's full block of the similarity matrix
  c.loss.tile_size = 1024  # ours

  c.optim.name = "lars"  # ours: the large-batch optimizer of SimCLR-style contrastive training
  c.optim.learning_rate = 4.8  # ours: SimCLR's LARS rule 0.3 * batch / 256 at batch 4096
  c.optim.warmup_steps = 5_000  # ours
  c.optim.end_learning_rate_fraction = 0.0  # ours: cosine to zero
  c.optim.weight_decay = 1e-6  # ours: SimCLR's LARS weight decay
  c.optim.b1 = 0.9  # ours: LARS momentum
  c.optim.lars_trust_coefficient = 1e-3  # ours: the LARS paper's default
  c.optim.grad_clip_norm = 0.0  # ours

  c.train.global_batch_size = 4096  # paper: large batches (the exact size is not in the abstract; ours)
  c.train.num_steps = 200_000  # ours: ~400 epochs of ~2M AudioSet clips
  c.train.log_every = 100  # ours
  c.train.checkpoint_every = 2_000  # ours: ~an hour of pod time between saves
  c.train.keep_checkpoints = 5  # ours

  c.eval.tasks = ("audioset",)  # paper: AudioSet classification (mAP) is the headline task
  c.eval.window_seconds = 3.2  # ours: the training crop length
  c.eval.hop_seconds = 1.6  # ours
  c.eval.features = "pooled"  # lineage: PANNs' 2048-d embedding input ("stats" would be 8192-d at depth 6)
  c.eval.batch_size = 256  # ours
  c.eval.baselines = ("random_init",)  # ours
  return c
