"""TensorFlow without GPUs: the one place that imports TensorFlow for the project.

TensorFlow serves tf.data, TFRecord files, TensorBoard, `tf.io.gfile` and HEAR/SavedModel export; it must
never take an accelerator from JAX. Everything in `avcl`, `data_pipeline` and `launch` gets TensorFlow from
`import_tf()` instead of `import tensorflow`.
"""
from __future__ import annotations

import os
import sys

_TF = None


def _import_tensorflow_without_keras():
  """`import tensorflow`, minus the eager import of Keras that TensorFlow's __init__ attempts.

  TensorFlow imports `keras.src.optimizers` at import time (inside a try/except ImportError, for Keras's
  SavedModel registrations) and, with it, Keras and its backends: 2-3 s of the 8-11 s that importing TensorFlow
  took on a 2-core machine (2026-12-03), paid by every avcl process, while avcl uses no Keras. Keras is hidden from
  that one import only; `tf.keras` stays TensorFlow's lazy loader and `import keras` works afterwards."""
  hidden = "keras" not in sys.modules
  if hidden:
    sys.modules["keras"] = None  # An import of keras (or a submodule) raises ImportError meanwhile.
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  finally:
    if hidden and sys.modules.get("keras", 0) is None:
      del sys.modules["keras"]
  return tf


def import_tf():
  """Imports TensorFlow with every GPU hidden from it (TF must never take an accelerator from JAX)."""
  global _TF
  if _TF is None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Deferred on purpose: TensorFlow takes seconds to import, and `--help`, `paths.is_remote` and the
    # numpy-only readers must not pay for it.
    tf = _import_tensorflow_without_keras()
    try:
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
      # Devices were already initialised (someone imported TF before us); they must already be hidden.
      if tf.config.get_visible_devices("GPU"):
        raise RuntimeError("TensorFlow was initialised with a visible GPU before data_pipeline could hide "
                           "it; call data_pipeline.tf_cpu.import_tf() before using TensorFlow.") from None
    _TF = tf
  return _TF
