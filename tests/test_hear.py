"""avcl.hear: the HEAR 2021 API on a tiny random-init encoder (shapes, dtypes, timestamps, any length)."""

import numpy as np
import pytest
from flax import nnx

from avcl import hear, models
from configs import default

tf = hear.tf


def tiny_config():
  c = default.get_config()
  c.model.logmel.width = 4
  c.model.logmel.depth = 2
  c.model.video.name = ""
  c.model.embed_dim = 8
  c.model.head_hidden = 0
  c.loss.pairs.logmel_video = 0.0
  c.eval.window_seconds = 1.0
  c.eval.hop_seconds = 0.5
  c.eval.timestamp_window_seconds = 0.25
  c.eval.timestamp_hop_seconds = 0.05
  return c


@pytest.fixture(scope="module")
def hear_model():
  c = tiny_config()
  model = models.build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  return hear.AvclHearModel(model, c, step=3), model, c


def test_attributes(hear_model):
  m, model, c = hear_model
  assert isinstance(m, tf.Module)
  assert m.sample_rate == 16000 and isinstance(m.sample_rate, int)
  # The default config probes "stats": 64 mel bins pooled once (32) x 8 channels, mean and std.
  assert c.eval.features == "stats"
  assert m.scene_embedding_size == m.timestamp_embedding_size == 2 * 32 * 8
  assert all(not v.trainable for v in m.variables)


@pytest.mark.parametrize("seconds,batch", [(0.1, 1), (0.77, 3), (2.5, 16), (20.0, 16)])
def test_shapes_types_and_timestamps(hear_model, seconds, batch):
  m = hear_model[0]
  n = int(seconds * m.sample_rate)
  audio = tf.constant(np.random.default_rng(0).uniform(-1, 1, (batch, n)).astype(np.float32))
  scene = hear.get_scene_embeddings(audio, m)
  emb, ts = hear.get_timestamp_embeddings(audio, m)
  for t in (scene, emb, ts):
    assert isinstance(t, tf.Tensor) and t.dtype == tf.float32
  assert scene.shape == (batch, m.scene_embedding_size)
  k = n // 800 + 1  # One timestamp every 50 ms from 0 to the end.
  assert emb.shape == (batch, k, m.timestamp_embedding_size) and ts.shape == (batch, k)
  ts = ts.numpy()
  assert ts[0, 0] == 0.0 and 1000 * seconds - 2 * 50 <= ts[0, -1] <= 1000 * seconds  # As hear-validator checks.
  if k > 1:
    steps = np.diff(ts, axis=1)
    assert np.all(np.abs(steps - 50.0) < 1e-3)  # HEAR: regular spacing within 1 ms.
  assert np.all(ts == ts[:1])
  assert np.all(np.isfinite(scene.numpy())) and np.all(np.isfinite(emb.numpy()))


def test_matches_jax_embeddings_and_is_batch_independent(hear_model):
  m, model, c = hear_model
  ref = hear.numpy_reference(model, c)
  rng = np.random.default_rng(1)
  audio = rng.uniform(-0.5, 0.5, (3, 27000)).astype(np.float32)
  scene = hear.get_scene_embeddings(audio, m).numpy()  # numpy input is accepted too
  np.testing.assert_allclose(scene, ref.embed_clips(list(audio)), rtol=1e-3, atol=1e-4)
  emb, ts = hear.get_timestamp_embeddings(audio, m)
  ref_emb, ref_ts = ref.timestamp_embeddings(audio)
  np.testing.assert_allclose(emb.numpy(), ref_emb, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(ts.numpy(), ref_ts, atol=1e-3)
  # A sound's embedding does not depend on the others in the batch (eval-mode BatchNorm).
  np.testing.assert_allclose(hear.get_scene_embeddings(audio[1:2], m).numpy(), scene[1:2], rtol=1e-4,
                             atol=1e-5)


def test_bad_audio_errors(hear_model):
  m = hear_model[0]
  with pytest.raises(ValueError, match=r"\[n_sounds, n_samples\]"):
    hear.get_scene_embeddings(np.zeros(16000, np.float32), m)
  with pytest.raises(ValueError, match="float32"):
    hear.get_scene_embeddings(np.zeros((1, 16000), np.int16), m)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    hear.load_model("/nonexistent/avcl/run")


def test_saved_model_roundtrip(hear_model, tmp_path):
  m = hear_model[0]
  path = str(tmp_path / "saved")
  tf.saved_model.save(m, path)
  loaded = hear.load_model(path)
  assert isinstance(loaded, tf.Module)
  assert (loaded.sample_rate, loaded.scene_embedding_size, loaded.checkpoint_step) == \
      (16000, m.scene_embedding_size, 3)
  audio = np.random.default_rng(2).uniform(-1, 1, (2, 5000)).astype(np.float32)
  np.testing.assert_allclose(hear.get_scene_embeddings(audio, loaded).numpy(),
                             hear.get_scene_embeddings(audio, m).numpy(), rtol=1e-5, atol=1e-6)
  e1, t1 = hear.get_timestamp_embeddings(audio, loaded)
  e2, t2 = hear.get_timestamp_embeddings(audio, m)
  np.testing.assert_allclose(e1.numpy(), e2.numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(t1.numpy(), t2.numpy())


def test_pooled_features_size_and_values():
  """config.eval.features = "pooled": the sizes follow the layer, and embeddings match the JAX embedder."""
  c = tiny_config()
  c.eval.features = "pooled"
  model = models.build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  m = hear.AvclHearModel(model, c, step=0)
  assert m.scene_embedding_size == m.timestamp_embedding_size == model.audio_feature_dim == 8
  audio = np.random.default_rng(2).uniform(-0.5, 0.5, (2, 20000)).astype(np.float32)
  scene = hear.get_scene_embeddings(audio, m).numpy()
  ref = hear.numpy_reference(model, c)
  assert ref.dim == m.scene_embedding_size
  np.testing.assert_allclose(scene, ref.embed_clips(list(audio)), rtol=1e-3, atol=1e-4)
