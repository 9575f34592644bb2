"""Frozen audio embeddings: clip-level (mean over windows covering the clip) and timestamped frame-level.

Clip embedding: the clip is cut into windows of `window_seconds` every `hop_seconds`, enough to cover it
to its last sample (the last window, or the only one of a clip shorter than a window, is zero-padded); each
window goes through the frontend and the audio encoder (`AVModel.encode` at the layer `config.eval.features`:
"stats" in configs/default.py, the mean and standard deviation over time of CNN14's last conv map; "pooled",
the globally pooled conv features before the encoder's fc; or "output"; see docs/evaluation.md for why); the
clip embedding is the mean over its windows. The encoder sees windows of one fixed
length, the length it was trained on, so one compiled function serves clips of every duration.

Timestamp embeddings: windows of `timestamp_window_seconds` centred every `timestamp_hop_seconds`, from
t = 0 to the clip's end (zero-padded by half a window at both ends), each embedded as above.

Windows are run in batches of `batch_size` (the last batch zero-padded) through one jitted function.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from flax import nnx

from avcl import frontend as frontend_lib
from avcl.models.batch_norm import BatchNorm


def audio_encoder_name(model) -> str:
  """The audio encoder downstream tasks use: log-mel when the model has one, else waveform."""
  for name in ("logmel", "wave"):
    if name in model.encoders:
      return name
  raise ValueError("the model has no audio encoder (config.model.logmel.name and wave.name are empty)")


def frame_windows(audio: np.ndarray, window: int, hop: int) -> np.ndarray:
  """Windows covering a clip: f32[samples] -> f32[k, window], k = 1 + ceil(max(0, samples - window) / hop).

  The last window is zero-padded past the clip's end.
  """
  audio = np.asarray(audio, np.float32)
  if audio.ndim != 1 or audio.size == 0:
    raise ValueError(f"expected mono audio f32[samples] with samples > 0, got shape {audio.shape}")
  k = 1 + max(0, math.ceil((audio.size - window) / hop))
  padded = np.zeros(hop * (k - 1) + window, np.float32)
  padded[:audio.size] = audio
  return np.lib.stride_tricks.sliding_window_view(padded, window)[::hop][:k]


def centred_windows(audio: np.ndarray, window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
  """Windows centred at 0, hop, 2 hop, ... <= samples: f32[n, samples] -> (f32[n, k, window], int[k] centres).

  The clip is zero-padded by window // 2 on the left and enough on the right.
  """
  audio = np.asarray(audio, np.float32)
  n, samples = audio.shape
  k = samples // hop + 1
  left = window // 2
  padded = np.zeros((n, max(hop * (k - 1) + window, left + samples)), np.float32)
  padded[:, left:left + samples] = audio
  windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=1)[:, ::hop][:, :k]
  return windows, np.arange(k) * hop


def _audio_key(audio_cfg) -> tuple:
  return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in audio_cfg.items()))


@functools.lru_cache(maxsize=16)
def _encode_fn(graphdef, encoder: str, audio_key: tuple, layer: str):
  """One jitted `(state, windows f32[b, window]) -> f32[b, dim]` per architecture and frontend, so the
  pretrained and the randomly initialised encoder (same graph, other weights) share a compilation."""
  frontend = frontend_lib.from_config(ml_collections.ConfigDict(dict(audio_key))) \
      if encoder == "logmel" else (lambda x: x)

  @jax.jit
  def encode(state, windows):
    return nnx.merge(graphdef, state).encode(encoder, frontend(windows), train=False, layer=layer)

  return encode


class Embedder:
  """Jitted, batched embeddings from the audio encoder of an `AVModel` (frozen: eval-mode BatchNorm).

  Attributes: `sample_rate`, `dim` (feature dim), `window` and `hop` (samples), `encoder` ("logmel"/"wave"),
  `layer` (`config.eval.features`: "pooled" or "output", see `AVModel.encode`).
  """

  def __init__(self, model, audio_cfg, *, window_seconds: float, hop_seconds: float, batch_size: int = 64,
               timestamp_window_seconds: float | None = None, timestamp_hop_seconds: float = 0.05,
               encoder: str | None = None, layer: str = "pooled"):
    for field, value in (("window_seconds", window_seconds), ("hop_seconds", hop_seconds),
                         ("timestamp_hop_seconds", timestamp_hop_seconds)):
      if not value > 0:
        raise ValueError(f"config.eval.{field} must be > 0, got {value}")
    if batch_size < 1:
      raise ValueError(f"config.eval.batch_size must be >= 1, got {batch_size}")
    self.sample_rate = int(audio_cfg.sample_rate)
    self.encoder = encoder or audio_encoder_name(model)
    self.window = int(round(window_seconds * self.sample_rate))
    self.hop = int(round(hop_seconds * self.sample_rate))
    ts_window = window_seconds if timestamp_window_seconds is None else timestamp_window_seconds
    self.timestamp_window = int(round(ts_window * self.sample_rate))
    self.timestamp_hop = int(round(timestamp_hop_seconds * self.sample_rate))
    if min(self.hop, self.timestamp_hop) < 1:
      raise ValueError("eval hop_seconds / timestamp_hop_seconds are below one sample")
    self.batch_size = int(batch_size)
    graphdef, self._state = nnx.split(model)
    self.layer = layer
    self._encode = _encode_fn(graphdef, self.encoder, _audio_key(audio_cfg), layer)
    # The feature size depends on the layer ("stats" is larger than the encoder's feature_dim).
    self.dim = int(jax.eval_shape(self._encode, self._state,
                                  jax.ShapeDtypeStruct((1, self.window), jnp.float32)).shape[-1])

  def window_features(self, windows: np.ndarray) -> np.ndarray:
    """f32[m, window] -> f32[m, dim], in batches of `batch_size` (the last one zero-padded)."""
    m = windows.shape[0]
    out = np.empty((m, self.dim), np.float32)
    for i in range(0, m, self.batch_size):
      chunk = windows[i:i + self.batch_size]
      if chunk.shape[0] < self.batch_size:
        chunk = np.concatenate([chunk, np.zeros((self.batch_size - chunk.shape[0],) + chunk.shape[1:],
                                                np.float32)])
      out[i:i + self.batch_size] = np.asarray(self._encode(self._state, jnp.asarray(chunk)))[:m - i]
    return out

  def embed_clips(self, clips: Sequence[np.ndarray]) -> np.ndarray:
    """Clip-level embeddings: list of f32[samples_i] -> f32[n, dim] (mean over each clip's windows)."""
    windows = [frame_windows(c, self.window, self.hop) for c in clips]
    counts = [w.shape[0] for w in windows]
    feats = self.window_features(np.concatenate(windows))
    return np.stack([f.mean(axis=0) for f in np.split(feats, np.cumsum(counts)[:-1])])

  def timestamp_embeddings(self, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Frame-level embeddings: f32[n, samples] -> (f32[n, k, dim], f32[n, k] timestamps in ms)."""
    windows, centres = centred_windows(audio, self.timestamp_window, self.timestamp_hop)
    n, k = windows.shape[:2]
    feats = self.window_features(windows.reshape(n * k, -1)).reshape(n, k, self.dim)
    timestamps = np.broadcast_to(centres * (1000.0 / self.sample_rate), (n, k)).astype(np.float32)
    return feats, timestamps


def sample_windows(clips: Iterable[np.ndarray], window: int, hop: int, n: int, seed: int) -> np.ndarray:
  """A uniform sample of `n` of the windows `frame_windows` cuts from `clips` (all of them if fewer).

  Reservoir sampling (Algorithm R, numpy generator seeded by `seed`): one pass, memory for `n` windows,
  whatever the number of clips. Returns f32[min(n, windows), window] in the order the windows came.
  """
  if n < 1:
    raise ValueError(f"config.eval.bn_calibration_windows must be >= 1 to sample windows, got {n}")
  rng = np.random.default_rng(seed)
  kept, order = [], []
  seen = 0
  for clip in clips:
    for w in frame_windows(clip, window, hop):
      if seen < n:
        kept.append(np.array(w))
        order.append(seen)
      else:
        j = int(rng.integers(0, seen + 1))
        if j < n:
          kept[j], order[j] = np.array(w), seen
      seen += 1
  if not kept:
    raise ValueError("no windows to calibrate BatchNorm on: the training split is empty")
  return np.stack([kept[i] for i in np.argsort(order)])


def calibrate_batch_norm(model, audio_cfg, windows: np.ndarray, *, encoder: str | None = None):
  """A copy of `model` whose audio encoder's BatchNorm running statistics are those of `windows`.

  windows: f32[n, samples], raw audio windows (the frontend is applied here). One train-mode forward pass
  over all n windows as one batch with every BatchNorm's momentum at 0 stores each layer's batch mean and
  variance, where each layer's input was normalised by the statistics of the layers before it, which are
  the stored ones: the copy in eval mode computes on these windows exactly what that pass computed. The
  parameters and every other module (heads, video encoder) are unchanged; `model` itself is not modified.
  """
  encoder = encoder or audio_encoder_name(model)
  copy = nnx.clone(model)
  norms = [m for _, m in nnx.iter_modules(copy.encoders[encoder]) if isinstance(m, BatchNorm)]
  momenta = [m.momentum for m in norms]
  for m in norms:
    m.momentum = 0.0
  frontend = frontend_lib.from_config(audio_cfg) if encoder == "logmel" else (lambda x: x)
  calib_def, calib_state = nnx.split(copy)

  @jax.jit
  def run(state, x):
    m = nnx.merge(calib_def, state)
    m.encode(encoder, frontend(x), train=True)
    return nnx.state(m)

  nnx.update(copy, run(calib_state, jnp.asarray(windows, jnp.float32)))
  for m, momentum in zip(norms, momenta):
    m.momentum = momentum
  return copy


class LogmelStats:
  """The pooled log-mel baseline: mean and standard deviation over time of each mel band, f32[n, 2 mels].

  Clips in a call are zero-padded to a common length rounded up to a whole second (few compilations);
  statistics are over the frames of each clip's own length only.
  """

  def __init__(self, audio_cfg, *, batch_size: int = 64):
    self.sample_rate = int(audio_cfg.sample_rate)
    self.hop_length = int(audio_cfg.hop_length)
    self.dim = 2 * int(audio_cfg.n_mels)
    self.batch_size = int(batch_size)
    frontend = frontend_lib.from_config(audio_cfg)

    @jax.jit
    def stats(audio, num_frames):
      """audio f32[b, samples], num_frames int[b] -> f32[b, 2 mels]."""
      x = frontend(audio)  # [b, frames, mels]
      mask = (jnp.arange(x.shape[1])[None, :] < num_frames[:, None])[..., None]
      n = num_frames[:, None].astype(jnp.float32)
      mean = jnp.sum(jnp.where(mask, x, 0.0), axis=1) / n
      var = jnp.sum(jnp.where(mask, jnp.square(x - mean[:, None]), 0.0), axis=1) / n
      return jnp.concatenate([mean, jnp.sqrt(var)], axis=-1)

    self._stats = stats

  def embed_clips(self, clips: Sequence[np.ndarray]) -> np.ndarray:
    out = []
    for i in range(0, len(clips), self.batch_size):
      chunk = clips[i:i + self.batch_size]
      length = max(c.size for c in chunk)
      length = self.sample_rate * math.ceil(length / self.sample_rate)
      audio = np.zeros((self.batch_size, length), np.float32)
      frames = np.ones(self.batch_size, np.int32)
      for j, c in enumerate(chunk):
        if c.ndim != 1 or c.size == 0:
          raise ValueError(f"expected mono audio f32[samples] with samples > 0, got shape {c.shape}")
        audio[j, :c.size] = c
        frames[j] = 1 + c.size // self.hop_length  # Frames of a centred STFT over the clip alone.
      out.append(np.asarray(self._stats(jnp.asarray(audio), jnp.asarray(frames)))[:len(chunk)])
    return np.concatenate(out)


def embed_examples(embedders: dict, examples: Iterable, *, multi_label: bool, num_classes: int,
                   group: int = 256, total: int | None = None, desc: str = "embedding",
                   progress: bool = True):
  """Reads examples once and embeds them with every embedder.

  Args:
    embedders: {name: object with `embed_clips(list of f32[samples]) -> f32[n, dim]`}.
    examples: iterable of `tasks.Example`.
  Returns:
    ({name: f32[n, dim]}, labels int32[n] or f32[n, num_classes] multi-hot).
  """
  feats = {name: [] for name in embedders}
  labels = []
  buffer = []

  def flush():
    clips = [ex.audio for ex in buffer]
    for name, e in embedders.items():
      feats[name].append(e.embed_clips(clips))
    for ex in buffer:
      labels.append(ex.labels)
    buffer.clear()

  with tqdm.tqdm(total=total, desc=desc, unit="clip", leave=False, disable=not progress) as bar:
    for ex in examples:
      if ex.audio.size == 0:
        raise ValueError(f"example {ex.key!r} has no audio samples")
      buffer.append(ex)
      if len(buffer) == group:
        flush()
        bar.update(group)
    n_last = len(buffer)
    if buffer:
      flush()
      bar.update(n_last)
  if not labels:
    raise ValueError(f"{desc}: no examples")
  if multi_label:
    y = np.zeros((len(labels), num_classes), np.float32)
    for i, ls in enumerate(labels):
      y[i, list(ls)] = 1.0
  else:
    y = np.asarray([ls[0] for ls in labels], np.int32)
  return {name: np.concatenate(f) for name, f in feats.items()}, y
