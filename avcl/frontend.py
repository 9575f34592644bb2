"""Log-mel spectrogram in JAX, computed inside the jitted training step.

Numerically this is `log(librosa.feature.melspectrogram(y, ...) + log_offset)` with librosa's defaults
(`center=True` with zero ("constant") padding, periodic Hann window of `win_length` centred in `n_fft`,
power 2, Slaney-normalised triangular mel filters in the Slaney or HTK mel scale).

How it is computed, and why:
- Framing is one gather with a constant index table (faster on XLA:CPU than concatenated strided
  slices, which we tried first).
- Only the win_length non-zero samples of each n_fft frame are framed. The DFT (default) is
  `jnp.fft.rfft` of the windowed samples zero-padded at the end to n_fft: a circular shift of the
  centred frame, so the same power spectrum (`config.audio.stft = "fft"`). The alternative `dft="matmul"`
  (`config.audio.stft = "matmul"`)
  multiplies the win_length non-zero samples of each frame by a windowed cos|sin DFT matrix (numpy
  float64 at trace time, phases shifted by the window's offset in the frame); it costs ~20x the FFT's
  FLOPs and measured 2-2.5x slower (CPU time) on this 2-core CPU, but may win on matrix units (TPU/GPU).
  `benchmarks/frontend.py` times both.
- The mel filterbank is built in numpy float64 at trace time and applied as a matmul.
"""
import functools
import math
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from avcl import config_check

MEL_SCALES = ("slaney", "htk")
# config.audio.stft -> log_mel_spectrogram(dft=...).
STFT_IMPLS = {"fft": "rfft", "matmul": "matmul"}


# ----------------------------------------------------------------------------------------------------
# Mel scale and filterbank (numpy float64, trace time).
# ----------------------------------------------------------------------------------------------------
_F_SP = 200.0 / 3.0  # Slaney: 66.67 Hz per mel below the break frequency.
_MIN_LOG_HZ = 1000.0  # Slaney: linear below 1 kHz, logarithmic above.
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = math.log(6.4) / 27.0  # Slaney: 27 log-spaced mels per factor 6.4 in frequency.


def hz_to_mel(hz, mel_scale: str = "slaney") -> np.ndarray:
  """Frequencies [...] in Hz to mels (Slaney's Auditory Toolbox scale or HTK's 2595 log10(1 + f/700))."""
  hz = np.asarray(hz, dtype=np.float64)
  if mel_scale == "htk":
    return 2595.0 * np.log10(1.0 + hz / 700.0)
  _check_mel_scale(mel_scale)
  linear = hz / _F_SP
  logarithmic = _MIN_LOG_MEL + np.log(np.maximum(hz, _MIN_LOG_HZ) / _MIN_LOG_HZ) / _LOGSTEP
  return np.where(hz >= _MIN_LOG_HZ, logarithmic, linear)


def mel_to_hz(mel, mel_scale: str = "slaney") -> np.ndarray:
  """Inverse of `hz_to_mel`."""
  mel = np.asarray(mel, dtype=np.float64)
  if mel_scale == "htk":
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
  _check_mel_scale(mel_scale)
  linear = _F_SP * mel
  logarithmic = _MIN_LOG_HZ * np.exp(_LOGSTEP * (np.maximum(mel, _MIN_LOG_MEL) - _MIN_LOG_MEL))
  return np.where(mel >= _MIN_LOG_MEL, logarithmic, linear)


def _check_mel_scale(mel_scale):
  if mel_scale not in MEL_SCALES:
    raise ValueError(f"mel_scale must be one of {MEL_SCALES}, got {mel_scale!r}")


@functools.lru_cache(maxsize=32)
def mel_filterbank(*, sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float,
                   mel_scale: str = "slaney") -> np.ndarray:
  """Triangular mel filters, Slaney area normalisation: float64 [n_fft // 2 + 1, n_mels].

  Band i rises linearly from mel edge i to edge i+1 and falls to edge i+2 (edges equally spaced in
  mels from fmin to fmax); each band is scaled by 2 / (its width in Hz) so that all have equal area.
  This is what librosa.filters.mel computes by default (for both `htk=False` and `htk=True`).
  Returned transposed (frequency-major) so that it right-multiplies a power spectrum.
  """
  _check_mel_scale(mel_scale)
  fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)  # k * sr / n_fft (Nyquist only for even n_fft).
  edges_mel = np.linspace(hz_to_mel(fmin, mel_scale), hz_to_mel(fmax, mel_scale), n_mels + 2)
  edges_hz = mel_to_hz(edges_mel, mel_scale)
  widths = np.diff(edges_hz)  # [n_mels + 1]
  lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
  rising = (fft_hz[None, :] - lower) / widths[:-1, None]
  falling = (upper - fft_hz[None, :]) / widths[1:, None]
  del centre
  weights = np.maximum(0.0, np.minimum(rising, falling))  # [n_mels, freq]
  weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
  empty = np.flatnonzero(weights.max(axis=1) == 0.0)
  if empty.size:
    warnings.warn(
        f"mel filterbank: {empty.size} of n_mels={n_mels} bands cover no FFT bin (n_fft={n_fft} is too "
        f"small for so many mels between fmin={fmin} and fmax={fmax}); those bands are always 0.",
        stacklevel=3)
  return np.ascontiguousarray(weights.T)


def _hann(length: int) -> np.ndarray:
  """Periodic ("fftbins=True", librosa's and scipy.signal.get_window's default) Hann: float64 [length]."""
  return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


def _dft_matrix(n_fft: int, win_length: int) -> np.ndarray:
  """Periodic-Hann-windowed real DFT of the win_length non-zero samples: float64 [win, 2 * freq].

  The window sits centred in the n_fft frame (librosa's pad_center), starting at sample
  `(n_fft - win_length) // 2`; the phase uses the sample's position in the full frame so that the
  result equals rfft of the zero-padded frame. Columns: cos parts, then -sin parts.
  """
  offset = (n_fft - win_length) // 2
  n = np.arange(win_length, dtype=np.float64)
  window = _hann(win_length)
  k = np.arange(n_fft // 2 + 1, dtype=np.float64)
  # (n * k) mod n_fft keeps the angle argument small and exact before scaling by 2 pi / n_fft.
  phase = 2.0 * np.pi * np.mod(np.outer(n + offset, k), n_fft) / n_fft
  return np.concatenate([window[:, None] * np.cos(phase), -window[:, None] * np.sin(phase)], axis=1)


# ----------------------------------------------------------------------------------------------------
# The transform.
# ----------------------------------------------------------------------------------------------------
def num_frames(num_samples: int, *, n_fft: int, hop_length: int, center: bool = True) -> int:
  """Frames produced for `num_samples` samples (librosa's count; 1 + samples // hop for even n_fft)."""
  padded = num_samples + 2 * (n_fft // 2) if center else num_samples
  return 1 + (padded - n_fft) // hop_length


def check_config(c: config_check.Checker) -> None:
  """The `audio.*` fields (`c` on config.audio); with the whole config, also data.clip_seconds >= n_fft."""
  sr = c.integer("sample_rate", 1)
  n_fft = c.integer("n_fft", 2)
  c.integer("win_length", 1, n_fft if config_check.is_int(n_fft) else None)
  c.integer("hop_length", 1)
  c.integer("n_mels", 1)
  fmax = c.peek("fmax")
  nyquist = sr / 2 if config_check.is_int(sr) and sr > 0 else None
  # fmax None (Nyquist) is accepted from code and stored configs, never in a training config.
  top = fmax if config_check.is_real(fmax) else (nyquist if fmax is None else None)
  c.real("fmin", 0, top, hi_open=True)
  if fmax is not None or c.strict:
    c.real("fmax", 0, nyquist, lo_open=True)
  c.choice("mel_scale", MEL_SCALES)
  c.real("log_offset", 0, lo_open=True, why=" (log(0) is -inf)")
  c.choice("stft", tuple(STFT_IMPLS), default="fft")  # Configs saved before `audio.stft` used the FFT.
  clip_s = c.root.peek("data.clip_seconds") if c.root else None
  if (config_check.is_int(sr) and config_check.is_int(n_fft) and config_check.is_real(clip_s) and clip_s > 0
      and clip_s * sr < n_fft):
    c.root.fail("data.clip_seconds", clip_s, f"give at least audio.n_fft={n_fft} samples at {sr} Hz")


def validate_params(*, sample_rate, n_fft, win_length, hop_length, n_mels, fmin, fmax, mel_scale,
                    log_offset, prefix: str = "") -> None:
  """Raises ConfigError (a ValueError) naming every out-of-range parameter (prefix: e.g. "config.audio.").

  fmax None means Nyquist.
  """
  params = dict(sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                n_mels=n_mels, fmin=fmin, fmax=fmax, mel_scale=mel_scale, log_offset=log_offset)
  config_check.validate(check_config, params, prefix)


def _frames(audio: jax.Array, *, win_length: int, hop_length: int, start: int, count: int) -> jax.Array:
  """Frames [b, count, win_length] with frame t = audio[:, start + t * hop : start + t * hop + win].

  One gather with a constant [count, win] index table: on XLA:CPU it is several times faster than
  concatenating hop-strided slices (measured while choosing; `benchmarks/frontend.py`).
  """
  needed = start + (count - 1) * hop_length + win_length
  if needed > audio.shape[1]:  # Never index past the end (a gather would clamp silently).
    audio = jnp.pad(audio, ((0, 0), (0, needed - audio.shape[1])))
  index = start + hop_length * np.arange(count)[:, None] + np.arange(win_length)[None, :]
  return audio[:, index.astype(np.int32)]


@functools.partial(jax.jit, static_argnames=(
    "sample_rate", "n_fft", "win_length", "hop_length", "n_mels", "fmin", "fmax", "mel_scale",
    "log_offset", "center", "dft"))
def log_mel_spectrogram(audio: jax.Array, *, sample_rate: int, n_fft: int, win_length: int,
                        hop_length: int, n_mels: int, fmin: float, fmax: float | None,
                        mel_scale: str = "slaney", log_offset: float = 1e-6, center: bool = True,
                        dft: str = "rfft") -> jax.Array:
  """Natural log of the power mel spectrogram plus offset.

  Args:
    audio: f32[batch, samples] waveform.
    sample_rate..log_offset: as in `configs/default.py` (`config.audio`); fmax None means Nyquist.
    center: pad n_fft // 2 zeros on both sides so that frame t is centred on sample t * hop
      (librosa's default `center=True, pad_mode="constant"`).
    dft: "rfft" (jnp.fft.rfft of the windowed n_fft frames, default) or "matmul" (a windowed
      [win_length, 2 (n_fft // 2 + 1)] DFT matrix); equal to float32 rounding.

  Returns:
    f32[batch, frames, n_mels], frames = 1 + samples // hop_length when centred.
  """
  validate_params(sample_rate=sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                  n_mels=n_mels, fmin=fmin, fmax=fmax, mel_scale=mel_scale, log_offset=log_offset)
  if audio.ndim != 2:
    raise ValueError(f"audio must be [batch, samples], got shape {audio.shape}")
  if not jnp.issubdtype(audio.dtype, jnp.floating):
    raise ValueError(f"audio must be floating point, got dtype {audio.dtype}")
  if dft not in ("matmul", "rfft"):
    raise ValueError(f"dft must be 'matmul' or 'rfft', got {dft!r}")
  audio = audio.astype(jnp.float32)
  num_samples = audio.shape[1]
  count = num_frames(num_samples, n_fft=n_fft, hop_length=hop_length, center=center)
  if count < 1:
    raise ValueError(f"audio has {num_samples} samples, fewer than n_fft={n_fft} (center=False)")
  if center:
    audio = jnp.pad(audio, ((0, 0), (n_fft // 2, n_fft // 2)))
  fmax = sample_rate / 2.0 if fmax is None else fmax
  mel = mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=float(fmin),
                       fmax=float(fmax), mel_scale=mel_scale)
  n_freq = n_fft // 2 + 1
  # Only the window's win_length non-zero samples of each n_fft frame are framed.
  frames = _frames(audio, win_length=win_length, hop_length=hop_length,
                   start=(n_fft - win_length) // 2, count=count)  # [b, T, win]
  if dft == "matmul":
    # The window's offset inside the n_fft frame is in the DFT matrix's phases.
    spec = frames @ jnp.asarray(_dft_matrix(n_fft, win_length), jnp.float32)  # [b, T, 2 * freq]
    power = jnp.square(spec[..., :n_freq]) + jnp.square(spec[..., n_freq:])
  else:
    # rfft zero-pads at the end instead of centring the window in the frame: a circular shift of the
    # n_fft-sample sequence, which changes only the phases, not the power spectrum.
    # The explicit pad lets XLA fuse it with the window multiply; rfft(..., n=n_fft) measured ~1.7x
    # slower on XLA:CPU.
    windowed = jnp.pad(frames * jnp.asarray(_hann(win_length), jnp.float32),
                       ((0, 0), (0, 0), (0, n_fft - win_length)))
    spec = jnp.fft.rfft(windowed, axis=-1)
    power = jnp.square(spec.real) + jnp.square(spec.imag)
  mel_power = power @ jnp.asarray(mel, jnp.float32)  # [b, T, n_mels]
  return jnp.log(mel_power + log_offset)


def from_config(audio_cfg) -> Callable[[jax.Array], jax.Array]:
  """Validated `audio f32[b, samples] -> logmel f32[b, frames, n_mels]` from `config.audio`.

  `config.audio.stft` picks the DFT: "fft" (`dft="rfft"`) or "matmul" (`dft="matmul"`); missing means "fft".
  """
  config_check.validate(check_config, audio_cfg, "config.audio.")
  params = dict(sample_rate=audio_cfg.sample_rate, n_fft=audio_cfg.n_fft,
                win_length=audio_cfg.win_length, hop_length=audio_cfg.hop_length,
                n_mels=audio_cfg.n_mels, fmin=float(audio_cfg.fmin), log_offset=float(audio_cfg.log_offset),
                fmax=None if audio_cfg.fmax is None else float(audio_cfg.fmax), mel_scale=audio_cfg.mel_scale)
  # Configs saved before `audio.stft` existed computed the STFT with the FFT.
  stft = getattr(audio_cfg, "stft", "fft")
  return functools.partial(log_mel_spectrogram, **params, dft=STFT_IMPLS[stft])
