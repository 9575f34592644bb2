"""Tests for avcl.models: shapes, norms, parameter counts, BatchNorm modes, bf16, TSM shift, jit+grad."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avcl import config_validation
from avcl.models import BatchNorm, build_model, count_params, model_summary, param_counts, set_bn_groups
from avcl.models import conv as conv_lib
from avcl.models import model as model_lib
from avcl.models.conv import ConvImpl
from avcl.models.tsm_resnet import TSMResNet, stem_downsampling, temporal_shift
from configs.default import get_config

# Compile-bound: many small programs, each run once or twice (tests/conftest.py).
pytestmark = pytest.mark.fast_compile

SR = 16000


def _cfg(**model_overrides):
  c = get_config()
  for k, v in model_overrides.items():
    node = c.model
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def _frames(seconds, c):
  return 1 + int(seconds * c.audio.sample_rate) // c.audio.hop_length  # center=True framing


@nnx.jit(static_argnames="train")
def _forward(model, inputs, train):
  return model(inputs, train=train)


@nnx.jit(static_argnames=("name", "train"))
def _encode(model, name, x, train=False):
  return model.encode(name, x, train=train)


@nnx.jit(static_argnames="train")
def _apply(module, x, train=False):
  return module(x, train=train)


def _rand(key, shape):
  return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def _assert_unit_rows(z, d):
  assert z.shape[-1] == d and z.dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(np.asarray(z, np.float64), axis=-1), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("seconds", [1.0, 3.0])
def test_default_model_audio_shapes_and_norms(seconds):
  c = _cfg()
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  x = {"logmel": _rand(0, (4, _frames(seconds, c), c.audio.n_mels))}
  x["logmel2"] = x["logmel"] + 0.1 * _rand(1, x["logmel"].shape)
  for train in (True, False):
    out = _forward(model, x, train)
    assert set(out) == {"logmel", "logmel2"}
    for z in out.values():
      assert z.shape == (4, c.model.embed_dim)
      _assert_unit_rows(z, c.model.embed_dim)
  feats = _encode(model, "logmel", x["logmel"])
  assert feats.shape == (4, model.audio_feature_dim) == (4, c.model.logmel.width * 2 ** (c.model.logmel.depth - 1))


@pytest.mark.parametrize("seconds", [1.0, 3.0])
def test_res1dnet_and_resnet_audio_shapes_and_norms(seconds):
  c = _cfg(**{"logmel.name": "resnet", "logmel.width": 4, "logmel.depth": 3, "logmel.blocks": 1,
              "wave.name": "res1dnet31", "wave.width": 4, "wave.depth": 4, "video.name": "", "embed_dim": 32})
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  n = int(seconds * SR)
  x = {"wave": _rand(0, (4, n)), "logmel": _rand(1, (4, _frames(seconds, c), 64))}
  for train in (True, False):
    out = _forward(model, x, train)
    for k in x:
      assert out[k].shape == (4, 32)
      _assert_unit_rows(out[k], 32)
  assert _encode(model, "wave", x["wave"]).shape == (4, 4 * 8)
  assert _encode(model, "logmel", x["logmel"]).shape == (4, 4 * 4)
  assert model.audio_feature_dim == 16  # log-mel encoder first when both are present


def test_res1dnet_min_samples_error():
  from avcl.models.res1dnet import Res1dNet, min_samples
  assert min_samples(7) == 20476  # conv0 /5 then six stride-4 stages
  net = Res1dNet(width=2, depth=3, rngs=nnx.Rngs(0))
  assert _apply(net, jnp.zeros((2, min_samples(3)))).shape == (2, 8)
  with pytest.raises(ValueError, match=r"depth 3 needs >= 76 samples, got wave of 75"):
    _apply(net, jnp.zeros((2, 75)))


@pytest.mark.parametrize("size", [16, 32, 64, 112])
def test_default_model_video_shapes_and_norms(size):
  c = _cfg()
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  out = _forward(model, {"video": _rand(0, (2, 3, size, size, 3))}, True)
  assert out["video"].shape == (2, c.model.embed_dim)
  _assert_unit_rows(out["video"], c.model.embed_dim)


@pytest.mark.parametrize("size", [16, 32, 64, 112])
def test_stem_rule_keeps_last_stage_at_least_2x2(size):
  c = _cfg()  # 4 stages: three stride-2 stages after the stem
  video = build_model(c.model, c.audio, rngs=nnx.Rngs(0)).encoders["video"]
  stride, pool = stem_downsampling(size)
  s = -(-size // stride)  # SAME padding: ceil
  s = -(-s // 2) if pool else s
  for _ in range(len(c.model.video.blocks) - 1):
    s = -(-s // 2)
  assert 2 <= s <= 4, s

  fmap = nnx.jit(lambda m, x: m.feature_map(x, train=False))(video, _rand(0, (1, 2, size, size, 3)))
  assert fmap.shape == (1, 2, s, s, video.feature_dim)


def test_linear_head_and_feature_dims():
  c = _cfg(head_hidden=0, embed_dim=16)
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  assert model.heads["logmel"].fc1 is None
  assert model.feature_dims == {"logmel": 64, "video": 64}
  out = _forward(model, {"logmel": _rand(0, (2, 101, 64)), "video": _rand(1, (2, 2, 16, 16, 3))}, False)
  _assert_unit_rows(out["logmel"], 16)
  _assert_unit_rows(out["video"], 16)
  # Linear head: fc2 maps in_features -> embed_dim directly.
  assert count_params(model.heads["logmel"]) == 64 * 16 + 16


# -------------------------------------------------------------------------------------- errors
def test_absent_encoder_input_is_a_clear_error():
  c = _cfg()
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"'wave'.*no wave encoder.*config.model.wave.name"):
    model({"wave": jnp.zeros((2, 16000))}, train=False)
  with pytest.raises(ValueError, match="unknown model input 'audio'"):
    model({"audio": jnp.zeros((2, 16000))}, train=False)
  with pytest.raises(ValueError, match=r"cnn14 expects log-mel \[batch, frames, 64\]"):
    model({"logmel": jnp.zeros((2, 100, 32))}, train=False)
  with pytest.raises(ValueError, match="tsm_resnet expects video"):
    model({"video": jnp.zeros((2, 32, 32, 3))}, train=False)
  with pytest.raises(ValueError, match="'video' must be floating point.*uint8"):
    model({"video": jnp.zeros((2, 2, 32, 32, 3), jnp.uint8)}, train=False)


@pytest.mark.parametrize("field,value,msg", [
    ("logmel.name", "vgg", r"config.model.logmel.name='vgg' must be one of"),
    ("logmel.width", 0, r"config.model.logmel.width=0 must be an integer >= 1"),
    ("video.blocks", (), r"config.model.video.blocks"),
    ("video.shift_fraction", 0.7, r"config.model.video.shift_fraction=0.7 must be a finite number in \[0, 0.5\]"),
    ("head_hidden", -1, r"config.model.head_hidden"),
    ("dtype", "float16", r"config.model.dtype='float16' must be one of"),
])
def test_bad_config_names_the_field(field, value, msg):
  c = _cfg(**{field: value})
  with pytest.raises(ValueError, match=msg):
    build_model(c.model, c.audio, rngs=nnx.Rngs(0))


def test_each_encoder_owns_its_name_and_limits():
  """Encoders are listed once (model.ENCODER_MODULES); each checks its own limits, whoever asks."""
  assert model_lib.ENCODERS == {"logmel": ("cnn14", "resnet"), "wave": ("res1dnet31",), "video": ("tsm_resnet",)}
  c = _cfg(**{"logmel.depth": 9})
  with pytest.raises(ValueError, match=r"config.model.logmel.depth=9 must be an integer in \[1, 8\] for cnn14"):
    build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  with pytest.raises(config_validation.ConfigError, match=r"model.logmel.depth=9 must be an integer in \[1, 8\]"):
    config_validation.validate_config(c)
  c.model.logmel.name = "resnet"  # No depth limit of its own: depth 9 is accepted by the check.
  c.eval.features = "pooled"
  config_validation.validate_config(c)
  c = _cfg(**{"wave.name": "res1dnet31", "wave.depth": 8})
  with pytest.raises(config_validation.ConfigError, match=r"model.wave.depth=8 must be an integer in \[1, 7\] "
                     "for res1dnet31"):
    config_validation.validate_config(c)


def test_cnn14_too_few_mels_or_frames():
  c = _cfg(**{"logmel.depth": 6, "video.name": ""})
  c.audio.n_mels = 16
  with pytest.raises(ValueError, match=r"config.audio.n_mels >= 32, got 16"):
    build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  c = _cfg(**{"video.name": ""})
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"needs >= 8 frames, got 7"):
    _forward(model, {"logmel": jnp.zeros((2, 7, 64))}, False)


def test_no_encoder_at_all_is_an_error():
  c = _cfg(**{"logmel.name": "", "video.name": ""})
  with pytest.raises(ValueError, match="at least one of"):
    build_model(c.model, c.audio, rngs=nnx.Rngs(0))


def test_he_normal_init_statistics():
  from avcl.models.conv import he_normal, lecun_normal
  for shape in [(3, 3, 64, 128), (11, 1, 64), (300, 200)]:
    fan_in = int(np.prod(shape[:-1]))
    for init, gain in ((he_normal, 2.0), (lecun_normal, 1.0)):
      w = np.asarray(init(jax.random.key(0), shape), np.float64)
      assert w.shape == shape
      se = np.sqrt(gain / fan_in) / np.sqrt(2 * w.size)  # standard error of a normal sample's std
      assert abs(w.std() - np.sqrt(gain / fan_in)) < 5 * se
      assert abs(w.mean()) < 5 * np.sqrt(gain / fan_in / w.size)
  a, b = he_normal(jax.random.key(0), (5, 7)), he_normal(jax.random.key(1), (5, 7))
  assert not np.allclose(a, b)


# ------------------------------------------------------------------------------- param counts
def _abstract(c):
  return nnx.eval_shape(lambda: build_model(c.model, c.audio, rngs=nnx.Rngs(0)))


def test_full_size_cnn14_param_count():
  c = _cfg(**{"logmel.width": 64, "logmel.depth": 6, "video.name": ""})
  model = _abstract(c)
  n = count_params(model.encoders["logmel"])
  # Independent count of PANNs' Cnn14 layers (bias-free 3x3 convs, BN scale+bias, fc1 2048x2048+bias).
  ch = [1, 64, 128, 256, 512, 1024, 2048]
  convs = sum(9 * (ch[i] * ch[i + 1] + ch[i + 1] ** 2) for i in range(6))
  bns = 2 * 64 + sum(2 * 2 * c_ for c_ in ch[1:])
  assert n == convs + bns + 2048 * 2048 + 2048
  # PANNs reports 80.8M for Cnn14, which includes the 527-way AudioSet classifier we do not build.
  assert abs(n + 2048 * 527 + 527 - 80.8e6) / 80.8e6 < 0.005
  assert model.encoders["logmel"].feature_dim == 2048


def test_full_size_res1dnet31_param_count():
  c = _cfg(**{"wave.name": "res1dnet31", "wave.width": 64, "wave.depth": 7, "logmel.name": "", "video.name": ""})
  model = _abstract(c)
  n = count_params(model.encoders["wave"])
  # Independent count: conv0 (11 taps), per stage two blocks of two k3 convs, 1x1 projection where the
  # shape changes, BN scale+bias after every conv, fc1 with bias.
  ch = [64 * m for m in (1, 2, 4, 8, 16, 16, 32)]
  ref, cin = 11 * 64 + 2 * 64, 64
  for i, cout in enumerate(ch):
    for j in range(2):
      ref += 3 * cin * cout + 3 * cout * cout + 4 * cout
      if (i > 0 and j == 0) or cin != cout:
        ref += cin * cout + 2 * cout
      cin = cout
  assert n == ref + 2048 * 2048 + 2048
  # PANNs reports 80.4M for Res1dNet31 including its 527-way AudioSet classifier.
  assert abs(n + 2048 * 527 + 527 - 80.4e6) / 80.4e6 < 0.005


def test_full_size_tsm_resnet50_param_count():
  c = _cfg(**{"video.width": 64, "video.blocks": (3, 4, 6, 3), "video.bottleneck": True, "logmel.name": ""})
  model = _abstract(c)
  n = count_params(model.encoders["video"])
  assert model.encoders["video"].feature_dim == 2048
  # ResNet50 without its fc layer has ~23.5M parameters (25.56M - 2.05M); pre-activation BNs move a few k.
  assert abs(n - 23.5e6) / 23.5e6 < 0.01, n


def test_model_summary_lists_each_part():
  c = _cfg()
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  counts = param_counts(model)
  assert counts["total"] == sum(v for k, v in counts.items() if k != "total") == count_params(model)
  text = model_summary(model)
  for part in ("logmel encoder (Cnn14)", "video encoder (TSMResNet)", "logmel head", "total"):
    assert part in text
  assert f"{counts['total']:,}" in text


# ------------------------------------------------------------------------------------ BatchNorm
def test_batchnorm_train_matches_numpy_and_updates_running_stats():
  x = np.random.default_rng(0).normal(2.0, 3.0, (6, 5, 4))
  bn = BatchNorm(4, momentum=0.9, epsilon=1e-5)
  y = np.asarray(bn(jnp.asarray(x, jnp.float32), train=True), np.float64)
  mean, var = x.mean((0, 1)), x.var((0, 1))
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * var, rtol=1e-5)
  # Eval uses the running averages and leaves them unchanged.
  y_eval = np.asarray(bn(jnp.asarray(x, jnp.float32), train=False), np.float64)
  np.testing.assert_allclose(y_eval, (x - 0.1 * mean) / np.sqrt(0.9 + 0.1 * var + 1e-5), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-5)


def _numpy_bn_loss(x, scale, bias, weights, groups, eps=1e-5):
  """float64 reference: sum(w_y * y) + sum(w_m * mean) + sum(w_v * var) of grouped train-mode BatchNorm."""
  xg = x.reshape((groups, -1) + x.shape[1:])  # [groups, rows, time, features]
  mean = xg.mean((1, 2), keepdims=True)
  var = ((xg - mean) ** 2).mean((1, 2), keepdims=True)
  y = (xg - mean) / np.sqrt(var + eps) * scale + bias
  w_y, w_m, w_v = weights
  return float(np.sum(w_y * y) + np.sum(w_m * mean) + np.sum(w_v * var))


@pytest.mark.parametrize("groups", [1, 2])
def test_batchnorm_gradients_match_finite_differences_and_autodiff(groups):
  """The hand-written backward of train-mode BatchNorm (batch_norm.normalize) against float64 central
  differences of a numpy BatchNorm, and against JAX's autodiff of the forward, through y, mean and var."""
  from avcl.models import batch_norm  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  x = rng.normal(1.0, 2.0, (4, 3, 3))
  scale, bias = rng.normal(1.0, 0.3, 3), rng.normal(0.0, 0.3, 3)
  weights = (rng.normal(size=(groups, 4 // groups, 3, 3)), rng.normal(size=(groups, 1, 1, 3)),
             rng.normal(size=(groups, 1, 1, 3)))

  def loss(x, scale, bias):
    y, mean, var = batch_norm.normalize(x.reshape((groups, -1) + x.shape[1:]), scale, bias, 1e-5)
    return jnp.sum(weights[0] * y) + jnp.sum(weights[1] * mean) + jnp.sum(weights[2] * var)

  args = [jnp.asarray(a, jnp.float32) for a in (x, scale, bias)]
  ours = jax.grad(loss, argnums=(0, 1, 2))(*args)
  h = 1e-6
  for i, a in enumerate((x, scale, bias)):
    fd = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
      up, down = [np.array(v) for v in (x, scale, bias)], [np.array(v) for v in (x, scale, bias)]
      up[i][idx] += h
      down[i][idx] -= h
      fd[idx] = (_numpy_bn_loss(*up, weights, groups) - _numpy_bn_loss(*down, weights, groups)) / (2 * h)
    np.testing.assert_allclose(np.asarray(ours[i]), fd, rtol=1e-3, atol=1e-4)
  def loss_autodiff(x, scale, bias):  # the forward that BatchNorm(custom_vjp=False) differentiates
    y, mean, var = batch_norm._train_autodiff(x, scale, bias, 1e-5, groups)
    return (jnp.sum(weights[0] * y.reshape(weights[0].shape)) + jnp.sum(weights[1] * mean)
            + jnp.sum(weights[2] * var))

  autodiff = jax.grad(loss_autodiff, argnums=(0, 1, 2))(*args)
  for a, b in zip(ours, autodiff):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("groups", [1, 2])
def test_batchnorm_custom_vjp_option_matches_autodiff_values_and_gradients(groups):
  """BatchNorm(custom_vjp=False), the config's model.bn_backward="autodiff", against the default module:
  same output, running statistics and gradients (input, scale, bias) to float32 rounding."""
  x = jax.random.normal(jax.random.key(0), (8, 5, 3, 4)) * 2 + 1
  ct = jax.random.normal(jax.random.key(1), x.shape)
  outs = []
  for custom_vjp in (True, False):
    bn = BatchNorm(4, num_groups=groups, custom_vjp=custom_vjp)
    bn.scale[...] = jnp.array([0.5, 1.0, 1.5, -2.0])
    graphdef, params, rest = nnx.split(bn, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

    def loss(params, x, graphdef=graphdef, rest=rest):
      m = nnx.merge(graphdef, params, rest)
      y = m(x, train=True)
      return jnp.vdot(y, ct), (y, m.mean[...], m.var[...])
    (_, aux), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    outs.append(jax.tree.leaves((aux, grads)))
  assert len(outs[0]) == len(outs[1]) == 6
  for a, b in zip(*outs):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_batchnorm_bfloat16_input_equals_the_float32_path_bit_for_bit():
  """A bfloat16 input is upcast inside the custom VJP (so its residual stays bfloat16): the output and the
  gradients equal those of normalising the float32 copy, as the module did before, bit for bit."""
  from avcl.models import batch_norm  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(1.0, 2.0, (8, 5, 4)), jnp.bfloat16)
  scale, bias = jnp.asarray(rng.normal(1.0, 0.3, 4), jnp.float32), jnp.asarray(rng.normal(size=4), jnp.float32)
  w = jnp.asarray(rng.normal(size=(2, 4, 5, 4)), jnp.float32)

  def loss(x, scale, bias, upcast_first):
    xg = x.reshape((2, 4) + x.shape[1:])
    y, mean, var = batch_norm.normalize(xg.astype(jnp.float32) if upcast_first else xg, scale, bias, 1e-5)
    return jnp.sum(w * y) + jnp.sum(mean) + jnp.sum(var)

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)), static_argnums=3)
  (v_new, g_new), (v_old, g_old) = grad(x, scale, bias, False), grad(x, scale, bias, True)
  assert g_new[0].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(v_new), np.asarray(v_old))
  for a, b in zip(g_new, g_old):
    np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))


def test_batchnorm_groups_match_per_shard_numpy():
  g = 4
  x = np.random.default_rng(1).normal(0.0, 1.0, (8, 3, 5)) * np.arange(1, 9)[:, None, None]
  bn = BatchNorm(5, momentum=0.0, num_groups=g)
  y = np.asarray(bn(jnp.asarray(x, jnp.float32), train=True), np.float64)
  ref, means, vars_ = [], [], []
  for shard in np.split(x, g):
    m, v = shard.mean((0, 1)), shard.var((0, 1))
    ref.append((shard - m) / np.sqrt(v + 1e-5))
    means.append(m)
    vars_.append(v)
  np.testing.assert_allclose(y, np.concatenate(ref), rtol=1e-4, atol=1e-5)
  # Running stats (momentum 0: the batch's) are the mean over groups of the group statistics.
  np.testing.assert_allclose(bn.mean[...], np.mean(means, 0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(bn.var[...], np.mean(vars_, 0), rtol=1e-5)
  with pytest.raises(ValueError, match="divisible by 4"):
    bn(jnp.zeros((6, 3, 5)), train=True)


def test_bn_sync_false_uses_bn_groups_and_sync_ignores_it():
  c = _cfg(bn_sync=False)
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0), bn_groups=4)
  groups = {m.num_groups for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm)}
  assert groups == {4}
  c = _cfg(bn_sync=True)
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0), bn_groups=4)
  assert {m.num_groups for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm)} == {1}
  assert set_bn_groups(model, 2) > 10
  assert {m.num_groups for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm)} == {2}


def test_bn_groups_equal_separate_forwards_per_shard():
  """bn_sync=False with g groups on a batch == g independent train-mode forwards on its shards."""
  c = _cfg(bn_sync=False)
  x = {"logmel": _rand(0, (8, 101, 64)), "video": _rand(1, (8, 2, 16, 16, 3))}
  grouped = build_model(c.model, c.audio, rngs=nnx.Rngs(0), bn_groups=2)
  out = _forward(grouped, x, True)
  for i in range(2):
    single = build_model(c.model, c.audio, rngs=nnx.Rngs(0), bn_groups=1)
    part = _forward(single, {k: v[4 * i:4 * i + 4] for k, v in x.items()}, True)
    for k in x:
      np.testing.assert_allclose(out[k][4 * i:4 * i + 4], part[k], rtol=2e-4, atol=2e-5)


def test_train_mode_depends_on_batch_eval_mode_does_not():
  c = _cfg()
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  a = {"logmel": _rand(0, (4, 101, 64)), "video": _rand(1, (4, 2, 16, 16, 3))}
  b = {k: v.at[1:].set(_rand(2, v[1:].shape) * 3.0) for k, v in a.items()}  # same first example
  before = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  ev_a, ev_b = _forward(model, a, False), _forward(model, b, False)
  for k in a:
    np.testing.assert_allclose(ev_a[k][0], ev_b[k][0], rtol=1e-5, atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat)))
  tr_a, tr_b = _forward(model, a, True), _forward(model, b, True)
  for k in a:
    assert np.max(np.abs(np.asarray(tr_a[k][0]) - np.asarray(tr_b[k][0]))) > 1e-3
  after = jax.tree.map(np.asarray, nnx.state(model, nnx.BatchStat))
  changed = [not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(after))]
  assert all(changed)  # every BatchNorm took part in the train-mode forward


# ----------------------------------------------------------------------------------------- bf16
def test_bfloat16_compute_float32_params_finite():
  c32, c16 = _cfg(), _cfg(dtype="bfloat16")
  m32 = build_model(c32.model, c32.audio, rngs=nnx.Rngs(0))
  m16 = build_model(c16.model, c16.audio, rngs=nnx.Rngs(0))
  assert {p.dtype for p in jax.tree.leaves(nnx.state(m16, nnx.Param))} == {jnp.dtype(jnp.float32)}
  x = {"logmel": _rand(0, (4, 101, 64)), "video": _rand(1, (4, 2, 32, 32, 3))}
  o32, o16 = _forward(m32, x, True), _forward(m16, x, True)
  for k in x:
    assert o16[k].dtype == jnp.float32 and np.all(np.isfinite(o16[k]))
    _assert_unit_rows(o16[k], c16.model.embed_dim)
    cos = np.sum(np.asarray(o16[k]) * np.asarray(o32[k]), -1)  # same params: bf16 stays close to f32
    assert np.all(cos > 0.95), cos
  # The convolutions really run in bfloat16.
  jaxpr = str(jax.make_jaxpr(lambda x: m16.encoders["video"](x, train=False))(x["video"]))
  assert "bf16" in jaxpr


# ------------------------------------------------------------------------------------------ TSM
def _np_shift(x, fraction):
  b, t, h, w, c = x.shape
  n = int(c * fraction)
  out = x.copy()
  for i in range(t):
    out[:, i, ..., :n] = x[:, i + 1, ..., :n] if i + 1 < t else 0.0
    out[:, i, ..., c - n:] = x[:, i - 1, ..., c - n:] if i > 0 else 0.0
  return out


@pytest.mark.parametrize("c,fraction", [(16, 0.125), (8, 0.25), (10, 0.125), (4, 0.1)])
def test_temporal_shift_matches_numpy(c, fraction):
  x = np.random.default_rng(0).normal(size=(2, 5, 3, 2, c)).astype(np.float32)
  np.testing.assert_array_equal(np.asarray(temporal_shift(jnp.asarray(x), fraction)), _np_shift(x, fraction))


def test_temporal_shift_mixes_frames_only_when_enabled():
  """With shift 0 frames are encoded independently; with TSM a frame's change reaches other frames."""
  x = _rand(0, (2, 4, 16, 16, 3))
  y = x.at[:, 0].set(_rand(1, (2, 16, 16, 3)))
  for fraction, mixes in ((0.0, False), (0.125, True)):
    m = TSMResNet(width=8, blocks=(1, 1), bottleneck=False, shift_fraction=fraction, rngs=nnx.Rngs(0))
    fx, fy = np.asarray(_per_frame_features(m, x)), np.asarray(_per_frame_features(m, y))
    assert np.max(np.abs(fx[:, 0] - fy[:, 0])) > 1e-3  # frame 0 itself changed
    diff = np.max(np.abs(fx[:, 1:] - fy[:, 1:]))
    assert (diff > 1e-4) == mixes, diff


@nnx.jit
def _per_frame_features(m, x):
  """Last-stage map [b, t, h * w * c]: frame i's entries depend on other frames only through TSM."""
  fmap = m.feature_map(x, train=False)
  return fmap.reshape(fmap.shape[:2] + (-1,))


# --------------------------------------------------------------------------------- jit and grad
def test_jit_train_step_with_split_merge_gives_grads_and_updates_stats():
  c = _cfg()
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  x = {"logmel": _rand(0, (4, 32, 64)), "logmel2": _rand(1, (4, 32, 64)), "video": _rand(2, (4, 2, 16, 16, 3))}

  @jax.jit
  def step(params, stats, x):
    def loss_fn(params):
      m = nnx.merge(graphdef, params, stats, copy=True)
      z = m(x, train=True)
      loss = -jnp.sum(z["logmel"] * z["video"]) - jnp.sum(z["logmel"] * z["logmel2"])
      return loss, nnx.state(m, nnx.BatchStat)
    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, new_stats

  loss, grads, new_stats = step(params, stats, x)
  assert np.isfinite(loss)
  g = jax.tree.leaves(grads)
  assert len(g) == len(jax.tree.leaves(params))
  assert all(np.all(np.isfinite(a)) for a in g)
  assert sum(float(np.sum(np.abs(a)) > 0) for a in g) == len(g)  # every parameter gets a gradient
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(new_stats)))


@pytest.mark.parametrize("remat_every", [1, 2])
def test_remat_gives_same_outputs_grads_and_statistics(remat_every):
  """Remat changes memory, not math, per block (1) and in nested groups of 2 blocks (the last group of
  each 3-block stack short). Without remat: nnx.jit + nnx.value_and_grad on the module; with remat: the
  functional pattern a trainer uses (split, then merge(copy=True) inside jax.jit)."""
  x = {"logmel": _rand(0, (4, 32, 64)), "video": _rand(2, (4, 2, 16, 16, 3))}

  def build(remat):  # a small model: two compilations of a backward pass
    c = _cfg(remat=remat, remat_every=remat_every, head_hidden=0, embed_dim=8,
             **{"logmel.width": 4, "logmel.depth": 3, "video.width": 4, "video.blocks": (2, 1)})
    return build_model(c.model, c.audio, rngs=nnx.Rngs(0))

  def loss(m):
    z = m(x, train=True)
    return jnp.sum(z["logmel"] * z["video"])

  plain = build(False)
  l0, g0 = nnx.jit(lambda m: nnx.value_and_grad(loss)(m))(plain)

  graphdef, params, stats = nnx.split(build(True), nnx.Param, nnx.BatchStat)

  def loss_fn(p):
    m = nnx.merge(graphdef, p, stats, copy=True)
    return loss(m), nnx.state(m, nnx.BatchStat)

  jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss_fn(p)[0]))(params))
  assert jaxpr.count("checkpoint") + jaxpr.count("remat") >= (2 if remat_every > 1 else 1)
  (l1, new_stats), g1 = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  np.testing.assert_allclose(l0, l1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), nnx.state(g0), g1)
  # BatchNorm running statistics are updated once per step, as without remat.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               nnx.state(plain, nnx.BatchStat), new_stats)


# ---------------------------------------------------------------------------------- sharded BN
@pytest.mark.parametrize("groups", [1, 8])
def test_batchnorm_on_sharded_batch(groups):
  """Global view, batch sharded over 8 devices: groups=1 gives global-batch statistics (bn_sync=True),
  groups=mesh.size gives each device shard's own statistics (bn_sync=False)."""
  n = len(jax.devices())
  assert n == 8, "tests/conftest.py forces 8 CPU devices"
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  x = np.random.default_rng(3).normal(size=(16, 3, 4)) * np.repeat(np.arange(1, 9), 2)[:, None, None] + 1.0
  sharded = jax.device_put(jnp.asarray(x, jnp.float32),
                           jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  bn = BatchNorm(4, num_groups=groups)
  y = np.asarray(_apply(bn, sharded, train=True), np.float64)
  ref = np.concatenate([(s - s.mean((0, 1))) / np.sqrt(s.var((0, 1)) + 1e-5) for s in np.split(x, groups)])
  np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5)


def test_video_gradient_through_max_pool_stem():
  """At >= 96 px the stem max-pools; the gradient must flow through it (it once failed to linearise)."""
  size = 112
  assert stem_downsampling(size)[1]
  c = _cfg()
  video = build_model(c.model, c.audio, rngs=nnx.Rngs(0)).encoders["video"]
  x = _rand(0, (1, 2, size, size, 3))
  grads = nnx.jit(lambda m, x: nnx.grad(lambda m: m.feature_map(x, train=False).sum())(m))(video, x)
  leaves = jax.tree.leaves(nnx.state(grads, nnx.Param))
  assert leaves and all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
  assert any(float(jnp.abs(g).max()) > 0 for g in leaves)


# ----------------------------------------------------------------------------------------- encode layers
@pytest.mark.parametrize("name, shape", [("logmel", (3, 151, 64)), ("wave", (3, 24000))])
def test_encode_pooled_is_the_fc_input(name, shape):
  """layer="pooled" gives the features the encoder's fc reads: output == relu(fc(pooled)), in numpy."""
  c = _cfg(**{"wave.name": "res1dnet31"})
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  x = _rand(0, shape)
  pooled = np.asarray(nnx.jit(lambda m, v: m.encode(name, v, layer="pooled"))(model, x), np.float64)
  out = np.asarray(_encode(model, name, x), np.float64)
  fc = model.encoders[name].fc
  ref = np.maximum(pooled @ np.asarray(fc.kernel[...], np.float64) + np.asarray(fc.bias[...], np.float64), 0)
  assert pooled.shape == out.shape == (3, model.encoders[name].feature_dim)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
  assert not np.allclose(pooled, out)
  with pytest.raises(ValueError, match="encode layer must be one of"):
    model.encode(name, x, layer="fc")


def test_encode_pooled_of_an_encoder_without_fc_is_its_output():
  c = _cfg(**{"logmel.name": "resnet"})
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  x = _rand(0, (2, 101, 64))
  np.testing.assert_array_equal(model.encode("logmel", x, layer="pooled"), model.encode("logmel", x))


def test_encode_stats_are_mean_and_std_over_time_of_the_conv_map():
  """layer="stats": per (frequency bin, channel) mean and std over time of CNN14's last map, in float64."""
  c = _cfg()
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  x = _rand(0, (3, 151, 64))
  stats = np.asarray(nnx.jit(lambda m, v: m.encode("logmel", v, layer="stats"))(model, x), np.float64)
  cmap = np.asarray(nnx.jit(lambda m, v: m.encoders["logmel"].conv_map(v, train=False))(model, x), np.float64)
  b, t, f, ch = cmap.shape
  assert f == 64 // 2 ** (c.model.logmel.depth - 1) and ch == model.encoders["logmel"].feature_dim
  flat = cmap.reshape(b, t, f * ch)
  ref = np.concatenate([flat.mean(1), flat.std(1)], axis=-1)
  assert stats.shape == (3, 2 * f * ch)
  np.testing.assert_allclose(stats, ref, rtol=1e-4, atol=1e-5)
  from avcl.evaluate import embed  # pylint: disable=g-import-not-at-top
  for layer, dim in (("stats", 2 * f * ch), ("pooled", ch)):
    assert embed.Embedder(model, c.audio, window_seconds=1.5, hop_seconds=0.75, layer=layer).dim == dim
  # The pooled features are the same map, frequency averaged, smoothed (PANNs: max_pool1d(3) +
  # avg_pool1d(3), padding 1, zeros counted) and max + mean pooled over time.
  pooled = np.asarray(model.encode("logmel", x, layer="pooled"), np.float64)
  m = cmap.mean(2)
  pad_max = np.pad(m, ((0, 0), (1, 1), (0, 0)), constant_values=-np.inf)
  pad_avg = np.pad(m, ((0, 0), (1, 1), (0, 0)))
  smooth = (np.max([pad_max[:, i:i + t] for i in range(3)], axis=0)
            + np.mean([pad_avg[:, i:i + t] for i in range(3)], axis=0))
  np.testing.assert_allclose(pooled, smooth.max(1) + smooth.mean(1), rtol=1e-4, atol=1e-5)


def test_encode_stats_of_another_encoder_names_it():
  c = _cfg(**{"logmel.name": "resnet"})
  model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="'stats' is available for the cnn14 log-mel encoder only"):
    model.encode("logmel", _rand(0, (2, 101, 64)), layer="stats")


@pytest.mark.parametrize("shape, kernel, stride, im2col", [
    ((6, 2, 2, 5), (3, 3, 5, 7), 1, True),  # onto a 2x2 map
    ((6, 4, 4, 5), (3, 3, 5, 7), 2, True),  # strided onto 2x2
    ((6, 3, 1, 5), (3, 3, 5, 7), 1, True),  # 3x1 map
    ((6, 4, 4, 5), (1, 1, 5, 7), 2, True),  # 1x1 projection onto 2x2
    ((6, 8, 8, 5), (3, 3, 5, 7), 1, False),  # 8x8: lax's own kernel
])
def test_conv_general_dilated_matches_lax_values_and_gradients(shape, kernel, stride, im2col):
  x = jax.random.normal(jax.random.key(0), shape)
  k = jax.random.normal(jax.random.key(1), kernel)
  dn = ("NHWC", "HWIO", "NHWC")

  def ours(x, k):
    return conv_lib.conv_general_dilated(x, k, (stride, stride), "SAME",
                                         dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, k.shape, dn))

  def ref(x, k):
    return jax.lax.conv_general_dilated(x, k, (stride, stride), "SAME", dimension_numbers=dn)

  primitives = {e.primitive.name for e in jax.make_jaxpr(ours)(x, k).eqns}
  assert ("conv_general_dilated" not in primitives) == im2col, primitives
  y, y_ref = ours(x, k), ref(x, k)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
  ct = jax.random.normal(jax.random.key(2), y.shape)
  g = jax.vjp(ours, x, k)[1](ct)
  g_ref = jax.vjp(ref, x, k)[1](ct)
  for a, b in zip(g, g_ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  # The modules use it: a 2x2 input through the default video encoder's conv factory equals lax.
  m = conv_lib.conv(kernel[2], kernel[3], kernel[:2], strides=stride, rngs=nnx.Rngs(0))
  np.testing.assert_allclose(np.asarray(m(x)), np.asarray(ref(x, m.kernel[...])), rtol=1e-5, atol=1e-5)
  # The option turned off (config model.im2col_max_positions=0) leaves every map to lax.
  off = {e.primitive.name for e in jax.make_jaxpr(
      lambda x, k: ConvImpl(im2col_max_positions=0)(
          x, k, (stride, stride), "SAME",
          dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, k.shape, dn)))(x, k).eqns}
  assert "conv_general_dilated" in off, off


def test_speed_options_reach_every_module_and_keep_values_and_gradients():
  """build_model applies config.model.bn_backward and im2col_max_positions to every BatchNorm and conv; the
  default model and the one with both undone give the same embeddings and gradients (float32 rounding)."""
  c = get_config()  # CNN14 and TSM-ResNet; the video encoder's last stage at 32 px is a 2x2 map (im2col)
  inputs = {"logmel": jax.random.normal(jax.random.key(0), (4, 16, c.audio.n_mels)),
            "video": jax.random.normal(jax.random.key(1), (4, 2, c.data.frame_size, c.data.frame_size, 3))}
  results = []
  for bn_backward, positions in (("custom_vjp", 4), ("autodiff", 0)):
    c.model.bn_backward, c.model.im2col_max_positions = bn_backward, positions
    model = build_model(c.model, c.audio, rngs=nnx.Rngs(0))
    mods = [m for _, m in nnx.iter_modules(model)]
    assert all(m.custom_vjp == (bn_backward == "custom_vjp") for m in mods if isinstance(m, BatchNorm))
    convs = [m for m in mods if isinstance(m, nnx.Conv)]
    assert convs and all(m.conv_general_dilated == ConvImpl(positions) for m in convs)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

    def loss(params, graphdef=graphdef, rest=rest):
      z = jnp.concatenate(list(nnx.merge(graphdef, params, rest)(inputs, train=True).values()), -1)
      return jnp.sum(z * jnp.cos(jnp.arange(z.size)).reshape(z.shape)), z
    (_, z), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)  # jitted: eager nnx is minutes
    results.append(jax.tree.leaves((z, g)))
  for a, b in zip(*results):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)


def test_conv_factory_1d_uses_lax():
  """1-D (waveform) convolutions go straight to lax, strided and dilated alike."""
  x = jax.random.normal(jax.random.key(0), (3, 40, 2))
  for kwargs in (dict(strides=5, padding=((5, 5),)), dict(dilation=2)):
    m = conv_lib.conv(2, 4, (3,), rngs=nnx.Rngs(0), **kwargs)
    ref = jax.lax.conv_general_dilated(
        x, m.kernel[...], (kwargs.get("strides", 1),), kwargs.get("padding", "SAME"),
        rhs_dilation=(kwargs.get("dilation", 1),), dimension_numbers=("NWC", "WIO", "NWC"))
    np.testing.assert_allclose(np.asarray(m(x)), np.asarray(ref), rtol=1e-6, atol=1e-6)


def _convolutions_outside_ynnpack(hlo_text: str) -> int:
  """Convolutions of an optimised XLA:CPU module that run as XLA's own (Eigen) kernel: those not inside a
  computation that a YNNPACK fusion (`__ynn_fusion`) calls."""
  ynn_bodies = {m for m in re.findall(r"calls=%([\w.\-]+)[^\n]*__ynn_fusion", hlo_text)}
  count, body = 0, None
  for line in hlo_text.splitlines():
    head = re.match(r"(?:ENTRY )?%([\w.\-]+) ", line)
    if head and line.rstrip().endswith("{"):
      body = head.group(1)
    elif " convolution(" in line and body not in ynn_bodies:
      count += 1
  return count


def test_cpu_conv_library_is_a_compile_option_with_the_same_values_and_gradients():
  """config model.cpu_conv_library: "eigen" compiles the same program with XLA:CPU's convolutions out of
  YNNPACK (the option takes effect on this jaxlib: more convolutions as XLA's own kernel), with the same
  loss and gradients as "ynnpack" (XLA's default) to float32 rounding; other platforms get no option."""
  assert conv_lib.compiler_options("eigen", "gpu") is None and conv_lib.compiler_options("eigen", "tpu") is None
  assert conv_lib.compiler_options("ynnpack", "cpu") is None
  with pytest.raises(ValueError, match="cpu_conv_library must be one of"):
    conv_lib.compiler_options("onednn", "cpu")
  # 32 channels: YNNPACK (XLA's default) takes convolutions of this size, not those of 8 channels or fewer.
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 32))
  k = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)) * 0.1
  ct = jax.random.normal(jax.random.key(2), (4, 16, 16, 32))

  def loss(x, k):
    y = jax.nn.relu(jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    return jnp.sum(y * ct)

  lowered = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x, k)
  compiled = {lib: lowered.compile(compiler_options=conv_lib.compiler_options(lib, "cpu"))
              for lib in conv_lib.CPU_CONV_LIBRARIES}
  outside = {lib: _convolutions_outside_ynnpack(c.as_text()) for lib, c in compiled.items()}
  assert outside["eigen"] == 3 and outside["ynnpack"] < 3, outside  # forward, input and kernel gradient
  (v_e, g_e), (v_y, g_y) = compiled["eigen"](x, k), compiled["ynnpack"](x, k)
  np.testing.assert_allclose(float(v_e), float(v_y), rtol=1e-5)
  for a, b in zip(g_e, g_y):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))

