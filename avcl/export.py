r"""Export the audio encoder as a TensorFlow SavedModel: `python -m avcl.export --workdir W --output DIR`.

    python -m avcl.export --workdir workdirs/default --output exported/            # newest checkpoint
    python -m avcl.export --checkpoint workdirs/default/checkpoints/600 --output gs://BUCKET/avcl_encoder

Using it needs TensorFlow only (no JAX, no avcl):

    import tensorflow as tf
    m = tf.saved_model.load("exported/")
    m.sample_rate.numpy(), m.embedding_size.numpy()            # 16000, 512 for the default config
    scene = m.scene_embeddings(audio)                          # audio f32[b, n] at m.sample_rate, in [-1, 1]
    emb, ts = m.timestamp_embeddings(audio)                    # [b, frames, dim], [b, frames] ms
    m.signatures["scene_embeddings"](audio=audio)["embedding"]  # the same as serving signatures

Both functions take any batch size and length (n >= 1). Their definitions are avcl.hear's (scene: the mean of
window features over windows covering the sound; timestamp: windows centred every timestamp hop); the
numbers are avcl.hear's, since the SavedModel is that module saved (the JAX encoder converted by jax2tf into
an XlaCallModule op, which TensorFlow runs). Attributes (scalar variables): sample_rate, embedding_size,
window_seconds, hop_seconds, timestamp_window_seconds, timestamp_hop_seconds, checkpoint_step.
`avcl.hear.load_model(DIR)` and `python -m avcl.embed --saved-model DIR` load it too.

TFLite (unless --no-tflite): DIR/tflite/scene_window.tflite and DIR/tflite/timestamp_window.tflite, the
encoder on a fixed batch of windows, f32[tflite_batch, window] -> f32[tflite_batch, dim] (window:
`window_seconds`, resp. `timestamp_window_seconds` of samples); the caller cuts the windows and averages
(as avcl.hear does; DIR/tflite/windows.json gives the sizes). The whole variable-length functions do not
convert: with a polymorphic batch the StableHLO inside jax2tf's XlaCallModule op holds a dynamic gather,
which the TFLite converter does not support ("'vhlo.dynamic_gather_v1' op is not part of the vhlo support
yet", TensorFlow 2.21); at fixed shapes it converts with TFLite's built-in ops only.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from jax.experimental import jax2tf

from avcl import checkpoints, hear
from data_pipeline import paths

tf = hear.tf


class ExportedEncoder(tf.Module):
  """What the SavedModel holds: avcl.hear's module, its functions, signatures and scalar attributes."""

  def __init__(self, module: hear.AvclHearModel):
    super().__init__(name="avcl_encoder")
    self._hear = module  # Tracks the weights and hear's own `_meta`.
    self._meta = module._meta  # pylint: disable=protected-access  (hear.load_model reads it back)
    sr = module.sample_rate
    window, hop, ts_window, ts_hop = (module._window, module._hop, module._ts_window,  # pylint: disable=protected-access
                                      module._ts_hop)  # pylint: disable=protected-access

    def scalar(value, dtype):
      return tf.Variable(value, trainable=False, dtype=dtype)

    self.sample_rate = scalar(sr, tf.int64)
    self.embedding_size = scalar(module.scene_embedding_size, tf.int64)
    self.window_seconds = scalar(window / sr, tf.float64)
    self.hop_seconds = scalar(hop / sr, tf.float64)
    self.timestamp_window_seconds = scalar(ts_window / sr, tf.float64)
    self.timestamp_hop_seconds = scalar(ts_hop / sr, tf.float64)
    self.checkpoint_step = scalar(module.checkpoint_step, tf.int64)
    spec = [tf.TensorSpec([None, None], tf.float32, name="audio")]
    self.scene_embeddings = tf.function(module.scene_embeddings, input_signature=spec, autograph=False)
    self.timestamp_embeddings = tf.function(module.timestamp_embeddings, input_signature=spec, autograph=False)

    def scene_signature(audio):
      return {"embedding": module.scene_embeddings(audio)}

    def timestamp_signature(audio):
      emb, ts = module.timestamp_embeddings(audio)
      return {"embedding": emb, "timestamps_ms": ts}

    self.serving_signatures = {
        "scene_embeddings": tf.function(scene_signature, input_signature=spec, autograph=False)
        .get_concrete_function(),
        "timestamp_embeddings": tf.function(timestamp_signature, input_signature=spec, autograph=False)
        .get_concrete_function()}


def tflite_window_model(module: hear.AvclHearModel, window: int, batch: int) -> bytes:
  """The encoder on f32[batch, window] -> f32[batch, dim] as a TFLite flatbuffer (weights as constants)."""
  fn = tf.function(jax2tf.convert(module.jax_encoder, with_gradient=False), autograph=False,
                   input_signature=[tf.TensorSpec([batch, window], tf.float32, name="windows")])
  holder = tf.Module()
  holder.fn = fn
  converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], trackable_obj=holder)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  return converter.convert()


def export(model_path: str, output: str, *, tflite: bool = True, tflite_batch: int = 1) -> dict:
  """Writes the SavedModel of a workdir or checkpoint directory to `output` (local or gs://), and the TFLite
  window models in output/tflite; returns what was written."""
  if tflite_batch < 1:
    raise ValueError(f"tflite_batch must be >= 1, got {tflite_batch}")
  module = hear.load_model(model_path)
  if not isinstance(module, hear.AvclHearModel):
    raise ValueError(f"{model_path!r} is already an exported SavedModel")
  exported = ExportedEncoder(module)
  tf.saved_model.save(exported, output, signatures=exported.serving_signatures)
  sr = module.sample_rate
  out = {"saved_model": output, "sample_rate": sr, "embedding_size": module.scene_embedding_size,
         "checkpoint_step": module.checkpoint_step, "tflite": {}}
  if tflite:
    directory = paths.join(output, "tflite")
    paths.makedirs(directory)
    windows = {"scene_window": module._window, "timestamp_window": module._ts_window}  # pylint: disable=protected-access
    for name, window in windows.items():
      path = paths.join(directory, f"{name}.tflite")
      paths.write_bytes(path, tflite_window_model(module, window, tflite_batch))
      out["tflite"][name] = path
    meta = {"sample_rate": sr, "embedding_size": module.scene_embedding_size, "batch": tflite_batch,
            "scene_window_samples": module._window, "scene_hop_samples": module._hop,  # pylint: disable=protected-access
            "timestamp_window_samples": module._ts_window,  # pylint: disable=protected-access
            "timestamp_hop_samples": module._ts_hop,  # pylint: disable=protected-access
            "checkpoint_step": module.checkpoint_step}
    paths.write_text(paths.join(directory, "windows.json"), json.dumps(meta, indent=1) + "\n")
  return out


def main(argv: Sequence[str] | None = None) -> int:
  p, _ = hear.command_line("python -m avcl.export", __doc__)
  p.add_argument("--output", required=True, help="SavedModel directory to write (local or gs://)")
  p.add_argument("--no-tflite", action="store_true", help="no TFLite window models")
  p.add_argument("--tflite-batch", type=int, default=1, help="windows per TFLite call (fixed; default 1)")
  a = p.parse_args(argv)
  if paths.exists(paths.join(a.output, "saved_model.pb")):
    print(f"error: --output {a.output!r} already holds a SavedModel: remove it or choose another folder",
          file=sys.stderr)
    return 1
  try:
    out = export(a.workdir or a.checkpoint, a.output, tflite=not a.no_tflite, tflite_batch=a.tflite_batch)
  except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"SavedModel of checkpoint step {out['checkpoint_step']} ({out['embedding_size']}-d embeddings at "
        f"{out['sample_rate']} Hz) -> {out['saved_model']}")
  for name, path in out["tflite"].items():
    print(f"TFLite {name}: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
