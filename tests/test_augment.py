"""avcl.augment: mixing, gain, SpecAugment, augment_batch."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avcl import augment, frontend, sharding
from configs.default import get_config

# Compile-bound: many small programs, each run once or twice (tests/conftest.py).
pytestmark = pytest.mark.fast_compile

B = 16


def _mesh(n):
  return sharding.make_mesh(jax.devices()[:n])


def _sharded(tree, mesh):
  return jax.device_put(tree, sharding.batch_sharding(mesh))


def _batch(seed=0, b=B, samples=3200):
  rng = np.random.default_rng(seed)
  return {"audio": rng.uniform(-0.5, 0.5, (b, samples)).astype(np.float32),
          "frames": rng.integers(0, 256, (b, 2, 8, 8, 3), dtype=np.uint8)}


@pytest.mark.parametrize("partner, shards", [("global", 1), ("global", 8), ("local", 4), ("local", 8),
                                             ("gathered", 1), ("gathered", 8)])
def test_partners_are_a_derangement_within_blocks(partner, shards):
  for seed in range(5):
    idx = np.asarray(augment.mix_partners(jax.random.key(seed), 32, partner=partner, num_shards=shards))
    assert sorted(idx.tolist()) == list(range(32))  # A permutation ...
    assert np.all(idx != np.arange(32))  # ... with no fixed point.
    if partner == "local":
      block = 32 // shards
      np.testing.assert_array_equal(idx // block, np.arange(32) // block)


def test_global_partners_come_from_one_other_shard_with_a_random_shift():
  n, b = 8, 8
  shifts = set()
  for seed in range(60):
    idx, shift = augment.partner_plan(jax.random.key(seed), n * b, partner="global", num_shards=n)
    idx, shift = np.asarray(idx), int(shift)
    own = np.arange(n * b) // b
    assert 1 <= shift < n
    np.testing.assert_array_equal(idx // b, (own + shift) % n)  # Every partner on device d + shift.
    shifts.add(shift)
  assert shifts == set(range(1, n))  # Over steps, partners come from every other device.


def test_one_shard_global_is_the_old_whole_batch_derangement():
  """On one device "global" and "gathered" are the same map (the README's run does not move)."""
  for seed in range(3):
    k = jax.random.key(seed)
    np.testing.assert_array_equal(augment.mix_partners(k, 32, partner="global", num_shards=1),
                                  augment.mix_partners(k, 32, partner="gathered", num_shards=8))


@pytest.mark.parametrize("partner", ["global", "local", "gathered"])
def test_partner_rows_on_8_devices_equal_a_numpy_take(partner):
  mesh = _mesh(8)
  rng = np.random.default_rng(0)
  tree = {"wave": rng.normal(size=(32, 50)).astype(np.float32),
          "frames": rng.integers(0, 256, (32, 2, 4, 4, 3), dtype=np.uint8)}
  run = jax.jit(lambda t, i, s: augment.partner_rows(t, i, s, partner=partner, mesh=mesh))
  for seed in range(4):
    idx, shift = augment.partner_plan(jax.random.key(seed), 32, partner=partner, num_shards=8)
    out = run(_sharded(tree, mesh), idx, shift)
    assert out["frames"].dtype == np.uint8  # Frames travel as stored.
    for k in tree:
      np.testing.assert_array_equal(np.asarray(out[k]), tree[k][np.asarray(idx)], err_msg=f"{k} seed {seed}")


def test_local_partner_needs_divisible_batch():
  with pytest.raises(ValueError, match="num_shards"):
    augment.mix_partners(jax.random.key(0), 10, partner="local", num_shards=4)


@pytest.mark.parametrize("dist, alpha", [("beta", 1.0), ("beta", 0.2), ("uniform", 1.0)])
def test_weights_in_range(dist, alpha):
  w = np.asarray(augment.mix_weights(jax.random.key(1), 4096, distribution=dist, alpha=alpha,
                                     max_weight=0.3))
  assert w.min() >= 0 and w.max() <= 0.3
  assert w.max() > 0.25 and w.min() < 0.05  # The whole range is used.
  if dist == "uniform" or alpha == 1.0:  # Beta(1, 1) is uniform: mean max_weight / 2.
    assert abs(w.mean() - 0.15) < 0.01


@pytest.mark.parametrize("domain", ["linear", "log"])
def test_weight_zero_is_identity(domain):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(B, 7, 5)), jnp.float32)
  idx = augment.mix_partners(jax.random.key(0), B)
  out = augment.mix_with(x, idx, jnp.zeros(B), domain=domain)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(x))


def test_mix_formulas_match_numpy():
  rng = np.random.default_rng(3)
  x = rng.normal(-5, 3, (B, 6, 4)).astype(np.float32)
  idx, w = np.roll(np.arange(B), 3), rng.uniform(0, 0.5, B).astype(np.float32)
  lin = augment.mix_with(jnp.asarray(x), jnp.asarray(idx), jnp.asarray(w), domain="linear")
  x64, w64 = x.astype(np.float64), w.astype(np.float64)[:, None, None]
  np.testing.assert_allclose(lin, (1 - w64) * x64 + w64 * x64[idx], rtol=1e-6, atol=1e-6)
  log = augment.mix_with(jnp.asarray(x), jnp.asarray(idx), jnp.asarray(w), domain="log")
  ref = np.log((1 - w64) * np.exp(x64) + w64 * np.exp(x64[idx]))  # log-mixup-exp (BYOL-A).
  np.testing.assert_allclose(log, ref, rtol=1e-5, atol=1e-5)


def test_mix_returns_consistent_partner_and_weight():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(B, 10)), jnp.float32)
  mixed, idx, w = augment.mix(jax.random.key(5), x, distribution="uniform", max_weight=0.4,
                              partner="local", num_shards=2)
  x, idx, w = np.asarray(x, np.float64), np.asarray(idx), np.asarray(w, np.float64)
  np.testing.assert_allclose(mixed, (1 - w[:, None]) * x + w[:, None] * x[idx], rtol=1e-5, atol=1e-6)
  assert np.all(idx // 8 == np.arange(B) // 8)


def test_random_gain_range():
  a = jnp.ones((256, 10), jnp.float32)
  g = np.asarray(augment.random_gain(jax.random.key(0), a, 6.0))[:, 0]
  db = 20 * np.log10(g)
  assert db.min() >= -6.0 - 1e-4 and db.max() <= 6.0 + 1e-4 and db.max() - db.min() > 10
  assert augment.random_gain(jax.random.key(0), a, 0.0) is a


def test_spec_augment_mask_widths():
  b, t, m = 64, 50, 20
  x = jnp.asarray(np.random.default_rng(0).normal(size=(b, t, m)) + 10, jnp.float32)
  # One mask of each kind: the masked time steps / bins form one contiguous band of width <= max.
  spec = jax.jit(augment.spec_augment, static_argnames=("time_masks", "time_mask_frames", "freq_masks",
                                                        "freq_mask_bins"))
  out = np.asarray(spec(jax.random.key(0), x, time_masks=1, time_mask_frames=7, freq_masks=0,
                        freq_mask_bins=0))
  masked_t = np.all(out != np.asarray(x), axis=2)  # [b, t]: whole time steps replaced.
  widths = masked_t.sum(1)
  assert widths.max() <= 7 and widths.max() >= 5
  for row in masked_t:
    where = np.flatnonzero(row)
    assert where.size == 0 or where[-1] - where[0] + 1 == where.size
  fill = np.asarray(x).mean(axis=(1, 2))
  rows, cols = np.nonzero(masked_t)
  np.testing.assert_allclose(out[rows, cols, 0], fill[rows], rtol=1e-6)
  out = np.asarray(spec(jax.random.key(1), x, time_masks=0, time_mask_frames=0, freq_masks=2,
                        freq_mask_bins=4))
  masked_f = np.all(out != np.asarray(x), axis=1)  # [b, m]
  assert masked_f.sum(1).max() <= 8 and masked_f.sum(1).max() >= 5
  assert not np.any(np.all(out != np.asarray(x), axis=2))  # No time mask asked.


def _cfg(**mix):
  c = get_config()
  for k, v in mix.items():
    c.augment.mix[k] = v
  return c


@pytest.mark.parametrize("domain", ["waveform", "logmel"])
def test_augment_batch_shapes_and_determinism(domain):
  c = _cfg(audio_domain=domain)
  fe = frontend.from_config(c.audio)
  batch = _batch()
  mesh = _mesh(4)
  run = jax.jit(lambda k, b: augment.augment_batch(k, b, c.augment, frontend=fe, mesh=mesh,
                                                   second_view=True))
  out1, out2 = run(jax.random.key(0), batch), run(jax.random.key(0), batch)
  out3 = run(jax.random.key(1), batch)
  assert out1["logmel"].shape == out1["logmel2"].shape == (B, 21, 64)
  assert out1["wave"].shape == (B, 3200) and out1["video"].shape == (B, 2, 8, 8, 3)
  assert out1["video"].dtype == jnp.float32
  for k in out1:
    np.testing.assert_array_equal(np.asarray(out1[k]), np.asarray(out2[k]))
  assert not np.allclose(out1["logmel"], out3["logmel"])
  assert not np.allclose(out1["logmel"], out1["logmel2"])


def test_augment_batch_without_augmentation_is_frontend_and_normalisation():
  c = get_config()
  c.augment.mix.enabled = True
  c.augment.mix.max_weight = 0.0  # Weight 0: mixing is the identity.
  c.augment.gain_db = 0.0
  c.augment.time_masks = c.augment.freq_masks = 0
  fe = frontend.from_config(c.audio)
  batch = _batch()
  out = augment.augment_batch(jax.random.key(0), batch, c.augment, frontend=fe)
  np.testing.assert_array_equal(np.asarray(out["wave"]), batch["audio"])
  np.testing.assert_array_equal(np.asarray(out["logmel"]), np.asarray(fe(batch["audio"])))
  mean, std = np.array(augment.VIDEO_MEAN), np.array(augment.VIDEO_STD)
  np.testing.assert_allclose(out["video"], (batch["frames"] / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("partner, devices", [("local", 4), ("global", 8), ("global", 1), ("gathered", 8)])
def test_augment_batch_mixes_video_and_audio_with_same_partner(partner, devices):
  """Sharded mixing equals a float64 numpy reference of the same partner map and weights."""
  c = get_config()
  c.augment.gain_db = 0.0
  c.augment.time_masks = c.augment.freq_masks = 0
  c.augment.mix.partner = partner
  fe = frontend.from_config(c.audio)
  mesh = _mesh(devices)
  batch = _batch()
  run = jax.jit(lambda k, b: augment.augment_batch(k, b, c.augment, frontend=fe, mesh=mesh))
  out = run(jax.random.key(2), _sharded(batch, mesh))
  idx, w = np.asarray(out["mix_index"]), np.asarray(out["mix_weight"], np.float64)
  b = B // devices
  assert sorted(idx.tolist()) == list(range(B)) and w.max() <= 0.5 and w.min() >= 0
  if partner == "local":
    assert np.all(idx // b == np.arange(B) // b)
  if partner == "global" and devices > 1:
    assert np.all(idx // b != np.arange(B) // b)  # Partners come from other devices.
  a = batch["audio"].astype(np.float64)
  np.testing.assert_allclose(out["wave"], (1 - w[:, None]) * a + w[:, None] * a[idx], atol=1e-6)
  np.testing.assert_allclose(out["logmel"], fe(out["wave"]), rtol=1e-5, atol=1e-4)
  mean, std = np.array(augment.VIDEO_MEAN), np.array(augment.VIDEO_STD)
  v = (batch["frames"] / 255.0 - mean) / std
  wv = w[:, None, None, None, None]
  np.testing.assert_allclose(out["video"], (1 - wv) * v + wv * v[idx], atol=1e-5)


@pytest.mark.parametrize("field, value", [("mix.max_weight", 0.7), ("mix.partner", "device"),
                                          ("mix.distribution", "normal"), ("gain_db", -1.0),
                                          ("time_masks", -1), ("mix.audio_domain", "stft")])
def test_bad_config_names_field(field, value):
  c = copy.deepcopy(get_config().augment)
  parent, name = (c.mix, field[4:]) if field.startswith("mix.") else (c, field)
  with parent.ignore_type():
    parent[name] = value
  with pytest.raises(ValueError, match=f"config.augment.{field}"):
    augment.validate_config(c)


def test_bad_config_names_every_field_at_once():
  """augment owns its section's checks: the same ones (and messages) as config_validation's report."""
  c = copy.deepcopy(get_config().augment)
  c.mix.max_weight = 0.7
  c.time_masks = -1
  with pytest.raises(ValueError) as e:
    augment.validate_config(c)
  assert "config.augment.mix.max_weight=0.7 must be a finite number in [0, 0.5]" in str(e.value)
  assert "config.augment.time_masks=-1 must be an integer >= 0" in str(e.value)


@pytest.mark.parametrize("partner", ["global", "gathered"])
def test_augment_batch_log_domain_on_8_devices_equals_numpy(partner):
  """log-mixup-exp with partners' log-mels moved between devices, and the second view's own partners."""
  c = get_config()
  c.augment.mix.audio_domain = "logmel"
  c.augment.mix.partner = partner
  c.augment.gain_db = 0.0
  c.augment.time_masks = c.augment.freq_masks = 0
  fe = frontend.from_config(c.audio)
  mesh = _mesh(8)
  batch = _batch(b=16)
  run = jax.jit(lambda k, b: augment.augment_batch(k, b, c.augment, frontend=fe, mesh=mesh, second_view=True))
  out = run(jax.random.key(7), _sharded(batch, mesh))
  assert out["logmel"].sharding.spec[0] == "data"  # Stays sharded over the batch axis.
  idx, w = np.asarray(out["mix_index"]), np.asarray(out["mix_weight"], np.float64)[:, None, None]
  clean = np.asarray(fe(batch["audio"]), np.float64)
  ref = np.log((1 - w) * np.exp(clean) + w * np.exp(clean[idx]))
  np.testing.assert_allclose(out["logmel"], ref, rtol=1e-5, atol=1e-4)
  assert not np.allclose(out["logmel2"], out["logmel"])  # Its own partners and weights.


def test_weight_zero_mixing_on_8_devices_is_the_identity():
  c = get_config()
  c.augment.mix.max_weight = 0.0
  c.augment.gain_db = 0.0
  c.augment.time_masks = c.augment.freq_masks = 0
  fe = frontend.from_config(c.audio)
  mesh = _mesh(8)
  batch = _batch()
  out = jax.jit(lambda k, b: augment.augment_batch(k, b, c.augment, frontend=fe, mesh=mesh))(
      jax.random.key(0), _sharded(batch, mesh))
  np.testing.assert_array_equal(np.asarray(out["wave"]), batch["audio"])
  # Frames: unmixed, up to the rounding of the normalisation compiled in another fusion.
  np.testing.assert_allclose(np.asarray(out["video"]), np.asarray(augment.normalize_frames(batch["frames"])),
                             rtol=0, atol=1e-6)
