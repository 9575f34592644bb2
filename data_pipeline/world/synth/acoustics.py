"""Loudness envelopes, mixing and the nuisances of real recordings: noise, reverberation, gain.

All functions are pure numpy; signals are f32[samples] mono.
"""
import numpy as np
import scipy.signal


def frame_envelope(x: np.ndarray, sample_rate: int, fps: float, num_frames: int) -> np.ndarray:
  """RMS of `x` over each video frame's interval [i / fps, (i + 1) / fps) -> f32[num_frames].

  Frame i is shown during that interval, so a sound starting inside it changes frame i.
  """
  edges = np.round(np.arange(num_frames + 1) * sample_rate / fps).astype(np.int64)
  padded = np.zeros(max(edges[-1], x.size), np.float64)
  padded[:x.size] = x
  power = np.add.reduceat(padded[:edges[-1]] ** 2, edges[:-1]) / np.diff(edges)
  return np.sqrt(power).astype(np.float32)


def colored_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
  """Noise with power spectrum ~ 1 / f**exponent (0 white, 1 pink, 2 brown) and unit RMS -> f32[n]."""
  spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
  freqs = np.fft.rfftfreq(n)
  freqs[0] = freqs[1]  # No infinite gain at DC.
  noise = np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n)
  noise -= noise.mean()
  return (noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)).astype(np.float32)


def hum(n: int, sample_rate: int, mains_hz: float, rng: np.random.Generator) -> np.ndarray:
  """Mains hum: a few harmonics of 50/60 Hz with random amplitudes, unit RMS -> f32[n]."""
  t = np.arange(n) / sample_rate
  x = sum(rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * mains_hz * k * t + rng.uniform(0, 2 * np.pi))
          for k in range(1, 6))
  return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def room_impulse_response(rng: np.random.Generator, sample_rate: int, rt60: float) -> np.ndarray:
  """A cheap diffuse room: direct path plus exponentially decaying noise reaching -60 dB at `rt60` s."""
  n = int(rt60 * sample_rate)
  t = np.arange(n) / sample_rate
  tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 6.9078: -60 dB at rt60.
  # Low-pass the tail: walls absorb high frequencies faster.
  b, a = scipy.signal.butter(1, rng.uniform(2000, 6000), fs=sample_rate)
  tail = scipy.signal.lfilter(b, a, tail)
  delay = int(rng.uniform(0.002, 0.01) * sample_rate)  # First reflection after the direct sound.
  ir = np.zeros(n + delay)
  ir[0] = 1.0
  ir[delay:] += 0.15 * tail / (np.abs(tail).max() + 1e-12)
  return ir.astype(np.float32)


def reverberate(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
  """Convolves with a room impulse response, keeping the length of `x` -> f32[len(x)]."""
  return scipy.signal.fftconvolve(x, ir)[:x.size].astype(np.float32)


def rms(x: np.ndarray) -> float:
  return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def add_noise(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
  """signal + noise scaled so that rms(signal) / rms(scaled noise) = 10**(snr_db / 20)."""
  if signal.shape != noise.shape:
    raise ValueError(f"signal {signal.shape} and noise {noise.shape} must have the same shape")
  noise_rms = rms(noise)
  if noise_rms == 0:
    raise ValueError("noise is silent: an SNR is undefined")
  scale = rms(signal) / noise_rms / (10 ** (snr_db / 20))
  return (signal + scale * noise).astype(np.float32)


def set_level(x: np.ndarray, rms_dbfs: float, peak_limit: float = 0.99) -> np.ndarray:
  """Scales `x` to an RMS of `rms_dbfs` dB full scale, then lowers it if the peak would exceed
  `peak_limit` (a gain change, never clipping) -> f32 in [-peak_limit, peak_limit]."""
  level = rms(x)
  if level == 0:
    return x.astype(np.float32)
  y = x * (10 ** (rms_dbfs / 20) / level)
  peak = float(np.abs(y).max())
  if peak > peak_limit:
    y = y * (peak_limit / peak)
  return y.astype(np.float32)
