"""avcl.frontend against librosa (float64 reference)."""
import types
import warnings

import librosa
import numpy as np
import pytest

from avcl import config_validation, frontend
from configs.default import get_config

SR = 16000
PARAMS = dict(sample_rate=SR, n_fft=512, win_length=400, hop_length=160, n_mels=64, fmin=60.0,
              fmax=7800.0, log_offset=1e-6)


def _librosa_log_mel(y, *, mel_scale, **p):
  mel = librosa.feature.melspectrogram(
      y=np.asarray(y, np.float64), sr=p["sample_rate"], n_fft=p["n_fft"], win_length=p["win_length"],
      hop_length=p["hop_length"], n_mels=p["n_mels"], fmin=p["fmin"], fmax=p["fmax"],
      htk=mel_scale == "htk")  # Defaults: center=True, pad_mode="constant", hann, power 2, slaney norm.
  return np.log(mel + p["log_offset"]).swapaxes(-1, -2)  # [b, frames, mels]


def _real_audio():
  """A chirp, a harmonic tone mix with an envelope, and near-silence: [3, 1.5 s]."""
  t = np.arange(int(1.5 * SR)) / SR
  chirp = librosa.chirp(fmin=100, fmax=7000, sr=SR, duration=1.5)
  tones = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate([220, 440, 660, 1320, 3000]))
  tones = 0.3 * tones * np.exp(-2 * t)
  quiet = 1e-4 * np.sin(2 * np.pi * 50 * t)
  return np.stack([0.5 * chirp, tones, quiet]).astype(np.float32)


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
def test_filterbank_matches_librosa(mel_scale):
  for sr, n_fft, n_mels, fmin, fmax in [(16000, 512, 64, 60.0, 7800.0), (22050, 2048, 128, 0.0, 11025.0),
                                        (16000, 1024, 40, 125.0, 7500.0), (8000, 401, 32, 0.0, 4000.0)]:
    ours = frontend.mel_filterbank(sample_rate=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                                   mel_scale=mel_scale)
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                              htk=mel_scale == "htk", dtype=np.float64)
    np.testing.assert_allclose(ours.T, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
def test_mel_scale_matches_librosa(mel_scale):
  hz = np.array([0.0, 30.0, 700.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0, 11025.0])
  mel = frontend.hz_to_mel(hz, mel_scale)
  np.testing.assert_allclose(mel, librosa.hz_to_mel(hz, htk=mel_scale == "htk"), rtol=1e-12)
  np.testing.assert_allclose(frontend.mel_to_hz(mel, mel_scale), hz, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("mel_scale", ["slaney", "htk"])
@pytest.mark.parametrize("dft", ["matmul", "rfft"])
@pytest.mark.parametrize("source", ["real", "random"])
def test_log_mel_matches_librosa(mel_scale, dft, source):
  if source == "real":
    y = _real_audio()
  else:
    y = np.random.default_rng(0).uniform(-1, 1, (2, 16000 + 37)).astype(np.float32)
  ours = np.asarray(frontend.log_mel_spectrogram(y, mel_scale=mel_scale, dft=dft, **PARAMS))
  ref = _librosa_log_mel(y, mel_scale=mel_scale, **PARAMS)
  assert ours.shape == ref.shape == (y.shape[0], 1 + y.shape[1] // 160, 64)
  # 1e-4 relative on the log-mel (atol only for values crossing log = 0).
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
  # 1e-4 relative on the mel power itself, for bands within 60 dB of their frame's loudest band: float32
  # cannot resolve bands further down (a chirp's far bands sit 80 dB below it; errors there are ~1e-7
  # of the frame's energy, as for librosa itself on float32 input).
  # The matmul DFT sums win_length = 400 float32 products per bin, in the order of the CPU's matmul kernel:
  # on the chirp, numpy's own float32 matmul reaches 7.8e-5 and XLA:CPU's AVX2 kernel (an AMD EPYC without
  # AVX-512, 2026-12-03) 1.5e-4, against 9e-8 in float64. So it gets 5e-4 (0.002 dB; the frontend's
  # contract is 0.01 dB), the FFT 1e-4.
  within = ref >= ref.max(axis=-1, keepdims=True) - np.log(1e6)
  rel = np.abs(np.expm1(ours.astype(np.float64) - ref))[within]
  assert rel.max() < (5e-4 if dft == "matmul" else 1e-4), rel.max()


def test_other_parameters_and_no_center():
  p = dict(sample_rate=22050, n_fft=1024, win_length=1024, hop_length=256, n_mels=96, fmin=0.0,
           fmax=11025.0, log_offset=1e-3)
  y = np.random.default_rng(1).normal(0, 0.1, (1, 5000)).astype(np.float32)
  ours = np.asarray(frontend.log_mel_spectrogram(y, mel_scale="slaney", **p))
  np.testing.assert_allclose(ours, _librosa_log_mel(y, mel_scale="slaney", **p), rtol=1e-4, atol=1e-5)
  ours = np.asarray(frontend.log_mel_spectrogram(y, mel_scale="htk", center=False, **p))
  ref = librosa.feature.melspectrogram(y=y.astype(np.float64), sr=22050, n_fft=1024, hop_length=256,
                                       n_mels=96, htk=True, center=False)
  np.testing.assert_allclose(ours, np.log(ref + 1e-3).swapaxes(-1, -2), rtol=1e-4, atol=1e-5)


def test_odd_n_fft_and_short_audio():
  p = dict(sample_rate=8000, n_fft=401, win_length=300, hop_length=100, n_mels=32, fmin=0.0,
           fmax=4000.0, log_offset=1e-6)
  for n in (1000, 1050, 150):  # 150 samples: shorter than one window (centre padding covers it).
    y = np.random.default_rng(n).normal(0, 0.1, (2, n)).astype(np.float32)
    for dft in ("rfft", "matmul"):
      ours = np.asarray(frontend.log_mel_spectrogram(y, mel_scale="htk", dft=dft, **p))
      ref = _librosa_log_mel(y, mel_scale="htk", **p)
      assert ours.shape == ref.shape
      np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


def test_from_config():
  c = get_config().audio
  fn = frontend.from_config(c)
  y = _real_audio()[:, :SR]
  ours = np.asarray(fn(y))
  ref = _librosa_log_mel(y, mel_scale=c.mel_scale, **{k: c[k] for k in PARAMS})
  np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("field, value, message", [
    ("fmax", 9000.0, "fmax"), ("win_length", 600, "win_length"), ("hop_length", 0, "hop_length"),
    ("fmin", 8000.0, "fmin"), ("mel_scale", "bark", "mel_scale"), ("log_offset", 0.0, "log_offset"),
    ("n_mels", 64.5, "n_mels")])
def test_from_config_rejects_bad_values(field, value, message):
  c = types.SimpleNamespace(**get_config().audio.to_dict())  # No ConfigDict type lock.
  setattr(c, field, value)
  with pytest.raises(ValueError, match=f"config.audio.{message}"):
    frontend.from_config(c)


def test_fmax_none_means_nyquist_outside_training_configs():
  """Code and stored configs may leave fmax None (Nyquist); a training config must give it."""
  frontend.validate_params(**dict(PARAMS, fmax=None), mel_scale="slaney")
  with pytest.raises(ValueError, match=r"fmin=8000.0 must be a finite number in \[0, 8000.0\)"):
    frontend.validate_params(**dict(PARAMS, fmax=None, fmin=8000.0), mel_scale="slaney")
  c = get_config()
  with c.audio.ignore_type():
    c.audio.fmax = None
  frontend.from_config(c.audio)
  with pytest.raises(config_validation.ConfigError, match="audio.fmax=None must be a finite number"):
    config_validation.validate_config(c)


def test_bad_audio_shape():
  with pytest.raises(ValueError, match=r"\[batch, samples\]"):
    frontend.log_mel_spectrogram(np.zeros(1000, np.float32), mel_scale="slaney", **PARAMS)


def test_empty_mel_bands_warn():
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    frontend.mel_filterbank(sample_rate=16000, n_fft=256, n_mels=128, fmin=0.0, fmax=8000.0,
                            mel_scale="htk")
  assert any("cover no FFT bin" in str(w.message) for w in caught)


def _audio_cfg(**changes):
  """`config.audio` with changes, as a plain namespace (no ConfigDict type lock)."""
  return types.SimpleNamespace(**dict(get_config().audio.to_dict(), **changes))


@pytest.mark.parametrize("stft", ["fft", "matmul"])
def test_config_stft_choices_match_librosa_and_each_other(stft):
  """`config.audio.stft` picks the DFT; both choices give librosa's log-mel within 0.01 dB (the benchmark's
  bar) and agree with each other to float32 rounding."""
  c = get_config().audio
  c.stft = stft
  y = _real_audio()[:, :SR]
  fn = frontend.from_config(c)
  assert fn.keywords["dft"] == {"fft": "rfft", "matmul": "matmul"}[stft]
  ours = np.asarray(fn(y))
  ref = _librosa_log_mel(y, mel_scale=c.mel_scale, **{k: c[k] for k in PARAMS})
  db = 10.0 / np.log(10.0)
  # Bands within 60 dB of their frame's loudest (float32's resolution; see test_log_mel_matches_librosa).
  within = ref >= ref.max(axis=-1, keepdims=True) - np.log(1e6)
  assert db * np.abs(ours - ref)[within].max() < 0.01
  other = frontend.from_config(_audio_cfg(stft="matmul" if stft == "fft" else "fft"))(y)
  np.testing.assert_allclose(ours, np.asarray(other), rtol=1e-4, atol=1e-5)


def test_config_stft_rejects_unknown():
  c = _audio_cfg(stft="dct")
  with pytest.raises(ValueError, match=r"config.audio.stft='dct'.*'fft', 'matmul'"):
    frontend.from_config(c)


def test_config_without_stft_uses_fft():
  """Configs saved before `audio.stft` existed still load, with the FFT they were trained with."""
  d = get_config().audio.to_dict()
  del d["stft"]
  fn = frontend.from_config(types.SimpleNamespace(**d))
  assert fn.keywords["dft"] == "rfft"
