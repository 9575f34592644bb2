"""HEAR 2021 API for avcl audio encoders (https://hearbenchmark.com/hear-api.html).

    import avcl.hear as hear
    model = hear.load_model("workdirs/default")          # a workdir, or WORKDIR/checkpoints/<step>
    scene = hear.get_scene_embeddings(audio, model)      # tf.float32 [n_sounds, scene_embedding_size]
    emb, ts = hear.get_timestamp_embeddings(audio, model)  # [n, n_timestamps, size], [n, n_timestamps] ms

`audio` is float32 [n_sounds, n_samples] in [-1, 1] at `model.sample_rate` (the run's
config.audio.sample_rate, 16000 for the default config), any batch size and length; a tf.Tensor or
anything numpy accepts.

`load_model` returns a `tf.Module`, as the HEAR validator requires: the JAX encoder is converted with
`jax.experimental.jax2tf` (batch dimension polymorphic) and its weights are held as non-trainable
`tf.Variable`s, so the embedding functions are TensorFlow graphs (`tf.function`s with an input signature of
[None, None] float32). The same object serves TensorFlow users: `export_saved_model` writes it as a
SavedModel, and `load_model` also accepts that SavedModel's directory.

Embeddings (see avcl/evaluate/embed.py for the same definitions in numpy/JAX):
  scene: mean over windows of `config.eval.window_seconds` every `hop_seconds` covering the sound (the last
    or only window zero-padded) of the audio encoder's pooled features (before the projection head);
  timestamp: windows of `eval.timestamp_window_seconds` centred at t = 0, hop, 2 hop, ... <= the sound's
    end (`eval.timestamp_hop_seconds`, 50 ms by default; zero padding beyond both ends); timestamps are the
    centres in milliseconds, exactly regularly spaced.
"""
from __future__ import annotations

import argparse
import os
import re

import jax
import numpy as np
from flax import nnx
from jax.experimental import jax2tf

from avcl import checkpoints
from avcl import frontend as frontend_lib
from avcl.evaluate import config as eval_config
from avcl.evaluate import embed as embed_lib
from data_pipeline import paths, tf_cpu

tf = tf_cpu.import_tf()  # TensorFlow with every GPU hidden (JAX keeps the accelerator).

# Windows per encoder call inside the graph: bounds activation memory for long or many sounds.
_CHUNK = 64


def _window_count(num_samples, window: int, hop: int):
  """1 + ceil(max(0, n - window) / hop) as a tf int32 scalar (the windows covering n samples)."""
  extra = tf.maximum(num_samples - window, 0)
  return 1 + (extra + hop - 1) // hop


class JaxEncoder:
  """The JAX window encoder of an AvclHearModel: fn(weights, windows f32[b, window]) -> f32[b, dim]."""

  def __init__(self, fn, weights):
    self.fn, self.weights = fn, weights

  def __call__(self, windows):
    return self.fn(self.weights, windows)


class AvclHearModel(tf.Module):
  """avcl audio encoder as a tf.Module with HEAR's attributes and embedding functions."""

  def __init__(self, model, config, step: int = 0, *, name: str = "avcl_hear"):
    super().__init__(name=name)
    config = eval_config.with_eval_defaults(config)
    e = config.eval
    eval_config.validate_eval_config(e)
    self.sample_rate = int(config.audio.sample_rate)
    encoder = embed_lib.audio_encoder_name(model)
    self.checkpoint_step = int(step)
    sr = self.sample_rate
    self._window = int(round(e.window_seconds * sr))
    self._hop = int(round(e.hop_seconds * sr))
    self._ts_window = int(round(e.timestamp_window_seconds * sr))
    self._ts_hop = int(round(e.timestamp_hop_seconds * sr))
    if min(self._hop, self._ts_hop) < 1:
      raise ValueError("config.eval.hop_seconds and timestamp_hop_seconds must be at least one sample")

    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)
    self._weights = [tf.Variable(np.asarray(l), trainable=False, name=f"w{i}") for i, l in enumerate(leaves)]
    frontend = frontend_lib.from_config(config.audio) if encoder == "logmel" else (lambda x: x)

    def encode(weights, windows):
      """windows f32[b, window] -> f32[b, dim] (eval-mode BatchNorm)."""
      m = nnx.merge(graphdef, jax.tree.unflatten(treedef, weights))
      return m.encode(encoder, frontend(windows), train=False, layer=e.features)

    # Kept for avcl.export, which converts the encoder at fixed shapes for TFLite (in a plain object, which
    # tf.Module does not track or save, unlike a list of arrays).
    self.jax_encoder = JaxEncoder(encode, leaves)
    # The embedding size depends on the probed layer (config.eval.features; "stats" is larger).
    dim = int(jax.eval_shape(encode, leaves, jax.ShapeDtypeStruct((1, self._window), np.float32)).shape[-1])
    self.scene_embedding_size = dim
    self.timestamp_embedding_size = dim
    # Stored as variables too, so a SavedModel of this module carries them.
    self._meta = tf.Variable([sr, dim, self._window, self._hop, self._ts_window, self._ts_hop, int(step)],
                             trainable=False, dtype=tf.int64, name="meta")

    weight_shapes = [None] * len(leaves)
    self._encode_scene = jax2tf.convert(encode, polymorphic_shapes=[weight_shapes, f"(b, {self._window})"],
                                        with_gradient=False)
    self._encode_ts = jax2tf.convert(encode, polymorphic_shapes=[weight_shapes, f"(b, {self._ts_window})"],
                                     with_gradient=False)
    spec = [tf.TensorSpec([None, None], tf.float32)]
    self.scene_embeddings = tf.function(self._scene, input_signature=spec, autograph=False)
    self.timestamp_embeddings = tf.function(self._timestamps, input_signature=spec, autograph=False)

  def _encode_windows(self, encode, windows, window: int):
    """f32[m, window] -> f32[m, dim], `_CHUNK` windows per call (the last chunk zero-padded)."""
    m = tf.shape(windows)[0]
    chunks = (m + _CHUNK - 1) // _CHUNK
    padded = tf.pad(windows, [[0, chunks * _CHUNK - m], [0, 0]])
    out = tf.map_fn(lambda w: encode(self._weights, w), tf.reshape(padded, [chunks, _CHUNK, window]),
                    fn_output_signature=tf.TensorSpec([_CHUNK, self.scene_embedding_size], tf.float32),
                    parallel_iterations=1)
    return tf.reshape(out, [-1, self.scene_embedding_size])[:m]

  def _scene(self, audio):
    """audio f32[n, samples] -> f32[n, dim]: mean of window features over windows covering each sound."""
    n, samples = tf.shape(audio)[0], tf.shape(audio)[1]
    k = _window_count(samples, self._window, self._hop)
    padded = tf.pad(audio, [[0, 0], [0, self._hop * (k - 1) + self._window - samples]])
    windows = tf.signal.frame(padded, self._window, self._hop, pad_end=False, axis=-1)[:, :k]  # [n, k, W]
    feats = self._encode_windows(self._encode_scene, tf.reshape(windows, [-1, self._window]), self._window)
    return tf.reduce_mean(tf.reshape(feats, [n, k, self.scene_embedding_size]), axis=1)

  def _timestamps(self, audio):
    """audio f32[n, samples] -> (f32[n, k, dim], f32[n, k] ms): windows centred every timestamp hop."""
    n, samples = tf.shape(audio)[0], tf.shape(audio)[1]
    k = samples // self._ts_hop + 1
    left = self._ts_window // 2
    length = tf.maximum(self._ts_hop * (k - 1) + self._ts_window, left + samples)
    padded = tf.pad(audio, [[0, 0], [left, length - left - samples]])
    windows = tf.signal.frame(padded, self._ts_window, self._ts_hop, pad_end=False, axis=-1)[:, :k]
    feats = self._encode_windows(self._encode_ts, tf.reshape(windows, [-1, self._ts_window]),
                                 self._ts_window)
    emb = tf.reshape(feats, [n, k, self.timestamp_embedding_size])
    # Centres in ms, computed in float64 so spacing is exact to well below a microsecond.
    ts = tf.cast(tf.range(k), tf.float64) * (1000.0 * self._ts_hop / self.sample_rate)
    return emb, tf.tile(tf.cast(ts, tf.float32)[None], [n, 1])


class _LoadedSavedModel(tf.Module):
  """A SavedModel written by `export_saved_model`, with HEAR's attributes restored from its variables."""

  def __init__(self, loaded):
    super().__init__(name="avcl_hear")
    self._loaded = loaded
    meta = [int(v) for v in loaded._meta.numpy()]
    self.sample_rate, dim = meta[0], meta[1]
    self.scene_embedding_size = self.timestamp_embedding_size = dim
    self.checkpoint_step = meta[6]
    self.scene_embeddings = loaded.scene_embeddings
    self.timestamp_embeddings = loaded.timestamp_embeddings


def _restore(path: str):
  """(model, config, step) from a workdir or a WORKDIR/checkpoints/<step> directory."""
  path = paths.absolute(path.rstrip("/"))  # os.path's basename/dirname split URLs at "/" as well.
  step = None
  if re.fullmatch(r"\d+", os.path.basename(path)) and \
      os.path.basename(os.path.dirname(path)) == "checkpoints":
    step = int(os.path.basename(path))
    path = os.path.dirname(os.path.dirname(path))
  elif os.path.basename(path) == "checkpoints":
    path = os.path.dirname(path)
  if not paths.exists(paths.join(path, "config.json")):
    raise FileNotFoundError(f"{path!r} is not an avcl workdir (no config.json): pass a training workdir, "
                            "a WORKDIR/checkpoints/<step> directory or a SavedModel from export_saved_model")
  return checkpoints.restore_model(path, step)


def load_model(model_file_path: str = "") -> tf.Module:
  """Loads an avcl audio encoder for HEAR.

  model_file_path: a training workdir (latest checkpoint), a `WORKDIR/checkpoints/<step>` directory, or a
  SavedModel directory written by `export_saved_model` (`python -m avcl.export`); local or gs://. Returns a
  tf.Module with `sample_rate`, `scene_embedding_size` and `timestamp_embedding_size`.
  """
  if not model_file_path:
    raise ValueError("avcl.hear.load_model needs model_file_path: an avcl workdir or checkpoint directory")
  if not paths.exists(model_file_path):
    raise FileNotFoundError(f"avcl.hear.load_model: {model_file_path!r} does not exist")
  if paths.exists(paths.join(model_file_path, "saved_model.pb")):
    return _LoadedSavedModel(tf.saved_model.load(model_file_path))
  model, config, step = _restore(model_file_path)
  return AvclHearModel(model, config, step)


def export_saved_model(model_file_path: str, output_dir: str) -> str:
  """Writes the HEAR module of a workdir/checkpoint as a TensorFlow SavedModel (no JAX needed to run it)."""
  module = load_model(model_file_path)
  if not isinstance(module, AvclHearModel):
    raise ValueError(f"{model_file_path!r} is already a SavedModel")
  tf.saved_model.save(module, output_dir)
  return output_dir


def _as_audio(audio, model) -> tf.Tensor:
  audio = tf.convert_to_tensor(audio)
  if audio.dtype != tf.float32:
    if not audio.dtype.is_floating:
      raise ValueError(f"audio must be float32 in [-1, 1], got dtype {audio.dtype.name}")
    audio = tf.cast(audio, tf.float32)
  if audio.shape.rank != 2:
    raise ValueError(f"audio must be [n_sounds, n_samples] at {model.sample_rate} Hz, got shape "
                     f"{audio.shape}")
  if audio.shape[1] == 0:
    raise ValueError("audio has no samples")
  return audio


def get_scene_embeddings(audio, model) -> tf.Tensor:
  """audio f32[n_sounds, n_samples] -> tf.float32 [n_sounds, model.scene_embedding_size]."""
  return model.scene_embeddings(_as_audio(audio, model))


def get_timestamp_embeddings(audio, model) -> tuple[tf.Tensor, tf.Tensor]:
  """audio f32[n_sounds, n_samples] -> (tf.float32 [n_sounds, n_timestamps, timestamp_embedding_size],
  tf.float32 [n_sounds, n_timestamps] timestamps in milliseconds, the centre of each embedding's window)."""
  return model.timestamp_embeddings(_as_audio(audio, model))


def numpy_reference(model, config):
  """The same embeddings computed by avcl.evaluate.embed (JAX, numpy in and out), for checks."""
  e = eval_config.with_eval_defaults(config).eval
  return embed_lib.Embedder(model, config.audio, window_seconds=e.window_seconds, hop_seconds=e.hop_seconds,
                            batch_size=_CHUNK, timestamp_window_seconds=e.timestamp_window_seconds,
                            timestamp_hop_seconds=e.timestamp_hop_seconds, layer=e.features)


def command_line(prog: str, doc: str) -> tuple[argparse.ArgumentParser, argparse._MutuallyExclusiveGroup]:
  """(parser, source group) of a command on a trained audio encoder (avcl.embed, avcl.export): its help is
  the module docstring `doc` (first paragraph, then the rest), and the encoder comes from exactly one of
  --workdir and --checkpoint, the paths `load_model` takes (a command may add sources to the group)."""
  p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", help="training workdir (its newest checkpoint), local or gs://")
  source.add_argument("--checkpoint", help="a WORKDIR/checkpoints/<step> directory")
  return p, source


__all__ = ["AvclHearModel", "command_line", "export_saved_model", "get_scene_embeddings", "get_timestamp_embeddings",
           "load_model"]
