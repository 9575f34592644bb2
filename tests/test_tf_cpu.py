"""data_pipeline.tf_cpu: TensorFlow loads without Keras (and without GPUs); Keras still works afterwards."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh interpreter: nothing else may have loaded TensorFlow or Keras first.
CODE = """
import sys
from data_pipeline import tf_cpu
tf = tf_cpu.import_tf()
assert "keras" not in sys.modules, sorted(m for m in sys.modules if m.startswith("keras"))[:5]
assert not tf.config.get_visible_devices("GPU")
assert list(tf.data.Dataset.range(3).as_numpy_iterator()) == [0, 1, 2]
import keras
print("keras", keras.__version__, "tf.keras", tf.keras.layers.Dense.__module__.split(".")[0])
"""


def test_import_tf_skips_keras_and_keras_imports_afterwards():
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
  r = subprocess.run([sys.executable, "-c", CODE], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "tf.keras keras" in r.stdout, r.stdout
