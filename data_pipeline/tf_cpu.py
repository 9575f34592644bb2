"""TensorFlow without GPUs: the one place that imports TensorFlow for the project.

TensorFlow serves tf.data, TFRecord files, TensorBoard, `tf.io.gfile` and HEAR/SavedModel export; it must
never take an accelerator from JAX. Everything in `avcl`, `data_pipeline` and `launch` gets TensorFlow from
`import_tf()` instead of `import tensorflow`.
"""
from __future__ import annotations

import os

_TF = None


def import_tf():
  """Imports TensorFlow with every GPU hidden from it (TF must never take an accelerator from JAX)."""
  global _TF
  if _TF is None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Deferred on purpose: TensorFlow takes seconds to import, and `--help`, `paths.is_remote` and the
    # numpy-only readers must not pay for it.
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    try:
      tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
      # Devices were already initialised (someone imported TF before us); they must already be hidden.
      if tf.config.get_visible_devices("GPU"):
        raise RuntimeError("TensorFlow was initialised with a visible GPU before data_pipeline could hide "
                           "it; call data_pipeline.tf_cpu.import_tf() before using TensorFlow.") from None
    _TF = tf
  return _TF
