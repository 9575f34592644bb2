"""BatchNorm in float32 with optional per-group (per-device) statistics.

Why a module of our own rather than `nnx.BatchNorm`: the training step runs on a *global view* under
`jit` (the batch axis sharded over the mesh axis "data"), so plain batch statistics are already those of
the global batch, i.e. synchronised across devices (`model.bn_sync=True`). Reproducing the other
behaviour, statistics of each device's shard only (`model.bn_sync=False`, what unsynchronised
data-parallel BN does on TPU pods), needs the batch split into `num_groups` groups ("ghost batches").
The batch axis is sharded contiguously (device i holds rows [i*b/n, (i+1)*b/n)), so with
`num_groups = mesh.size` group i is exactly device i's shard and the reshape below is shard-local.

How the trainer sets it: `build_model(model_cfg, audio_cfg, rngs=..., bn_groups=mesh.size)`; the value is
used only when `model_cfg.bn_sync` is False (with bn_sync it is forced to 1). `set_bn_groups(model, n)`
changes it on an existing model (e.g. after restoring a checkpoint onto a different mesh).

Statistics, scale and bias are float32 whatever the compute dtype: bfloat16 variance estimates over
large batches lose too much precision. The output is cast back to the input's dtype. The custom VJP keeps its
residual (the input) in the input's dtype, not as a float32 copy: half the bytes under a bfloat16 model.

Train mode has a hand-written backward pass (`normalize`, a custom VJP): the textbook BatchNorm gradient
needs two reductions and one elementwise pass over the activations, where JAX's autodiff of the two-pass
forward emits several more full passes. The narrow encoders are memory-bound on exactly these passes
(benchmarks/step_profile.py: elementwise and BatchNorm fusions are a quarter of the default step);
the gradients are the same to float32 rounding (tests/test_models.py). `BatchNorm(custom_vjp=False)` (config
`model.bn_backward="autodiff"`) keeps autodiff's backward of the plain forward, for before/after timings.
"""
import functools

import jax
import jax.numpy as jnp
from flax import nnx


def _axes(xg: jax.Array) -> tuple[int, ...]:
  """The reduced axes of xg [groups, n, ..., features]: all but the first and the last."""
  return tuple(range(1, xg.ndim - 1))


def _statistics(xg: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Two-pass mean and variance of each group of xg [groups, n, ..., features] (keepdims).

  Two-pass: E[(x - mean)^2] does not cancel catastrophically like E[x^2] - mean^2.
  """
  mean = jnp.mean(xg, axis=_axes(xg), keepdims=True)
  return mean, jnp.mean(jnp.square(xg - mean), axis=_axes(xg), keepdims=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalize_custom(xg, scale, bias, epsilon):
  return _normalize_fwd(xg, scale, bias, epsilon)[0]


def _normalize_fwd(xg, scale, bias, epsilon):
  x = xg.astype(jnp.float32)
  mean, var = _statistics(x)
  inv = jax.lax.rsqrt(var + epsilon)
  # The residual is xg in its own dtype: under a bfloat16 model that is half the bytes of a float32 copy,
  # for every BatchNorm of every encoder. The backward pass upcasts it again, which is exact.
  return ((x - mean) * inv * scale + bias, mean, var), (xg, mean, inv, scale)


def _normalize_bwd(epsilon, residuals, cotangents):
  """Gradients of (y, mean, var) = normalize(x, scale, bias), statistics per group of n rows.

  With xhat = (x - mean) * inv: dx = scale inv (dy - mean(dy) - xhat mean(dy xhat)) + dmean / n
  + 2 (x - mean) dvar / n; dscale = sum(dy xhat); dbias = sum(dy). Two reductions, one elementwise pass.
  """
  del epsilon
  x_in, mean, inv, scale = residuals
  xg = x_in.astype(jnp.float32)
  dy, dmean, dvar = cotangents
  axes = _axes(xg)
  n = 1
  for a in axes:
    n *= xg.shape[a]
  centred = xg - mean
  xhat = centred * inv
  sum_dy = jnp.sum(dy, axis=axes, keepdims=True)
  sum_dy_xhat = jnp.sum(dy * xhat, axis=axes, keepdims=True)
  dx = (scale * inv) * (dy - sum_dy / n - xhat * (sum_dy_xhat / n)) + dmean / n + (2.0 / n) * centred * dvar
  lead = tuple(range(xg.ndim - 1))
  return dx.astype(x_in.dtype), jnp.sum(sum_dy_xhat, axis=lead), jnp.sum(sum_dy, axis=lead)


_normalize_custom.defvjp(_normalize_fwd, _normalize_bwd)


def normalize(xg: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Train-mode BatchNorm of xg [groups, n, ..., features] (any float dtype) with each group's statistics.

  Computed in float32 whatever xg's dtype. Returns (y f32 shaped like xg, mean, var f32[groups, 1, ..., 1,
  features]) with y = (x - mean) / sqrt(var + eps) * scale + bias; differentiable in xg (its gradient in
  xg's dtype), scale and bias (also through mean and var).
  """
  return _normalize_custom(xg, scale, bias, epsilon)


def _train_autodiff(x, scale, bias, epsilon, g):
  """The train-mode forward as before the custom VJP, op for op (`custom_vjp=False`: benchmarks' before)."""
  xg = x.reshape((g, x.shape[0] // g) + x.shape[1:])
  axes = tuple(range(1, xg.ndim - 1))
  mean = jnp.mean(xg, axis=axes, keepdims=True)
  var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
  y = ((xg - mean) * jax.lax.rsqrt(var + epsilon)).reshape(x.shape)
  return y * scale + bias, mean, var


class BatchNorm(nnx.Module):
  """BatchNorm over every axis but the last (features).

  Train mode normalises with batch statistics (per group when `num_groups` > 1) and updates the running
  averages with the mean over groups of the group statistics (what averaging per-device running stats
  gives); eval mode normalises with the running averages. custom_vjp: train mode's backward is the
  hand-written one (True) or autodiff's (False); the same gradients to float32 rounding.
  """

  def __init__(self, features: int, *, momentum: float = 0.99, epsilon: float = 1e-5,
               num_groups: int = 1, scale_init: float = 1.0, custom_vjp: bool = True):
    if num_groups < 1:
      raise ValueError(f"BatchNorm num_groups must be >= 1, got {num_groups}")
    self.features = features
    self.momentum = momentum
    self.epsilon = epsilon
    self.num_groups = num_groups
    self.custom_vjp = custom_vjp
    self.scale = nnx.Param(jnp.full((features,), scale_init, jnp.float32))
    self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x: [batch, ..., features] -> same shape and dtype."""
    if x.shape[-1] != self.features:
      raise ValueError(f"BatchNorm expects {self.features} features on the last axis, got shape {x.shape}")
    dtype = x.dtype
    if train:
      g, b = self.num_groups, x.shape[0]
      if b % g:
        raise ValueError(f"BatchNorm with num_groups={g} (per-device statistics, model.bn_sync=False) "
                         f"needs a batch divisible by {g}, got batch {b}")
      # Group g holds rows [g b / G, (g + 1) b / G) of the batch; all other axes but features are reduced.
      # (The spatial axes stay separate: flattening them measured much slower on XLA:CPU.)
      if self.custom_vjp:
        y, mean, var = normalize(x.reshape((g, b // g) + x.shape[1:]), self.scale[...], self.bias[...],
                                 self.epsilon)
      else:
        y, mean, var = _train_autodiff(x.astype(jnp.float32), self.scale[...], self.bias[...], self.epsilon, g)
      m = self.momentum
      self.mean[...] = m * self.mean[...] + (1 - m) * mean.reshape(g, -1).mean(0)
      self.var[...] = m * self.var[...] + (1 - m) * var.reshape(g, -1).mean(0)
      return y.reshape(x.shape).astype(dtype)
    y = (x.astype(jnp.float32) - self.mean[...]) * jax.lax.rsqrt(self.var[...] + self.epsilon)
    return (y * self.scale[...] + self.bias[...]).astype(dtype)


def set_bn_groups(model: nnx.Module, num_groups: int) -> int:
  """Sets `num_groups` on every BatchNorm in `model`; returns how many were changed."""
  if num_groups < 1:
    raise ValueError(f"num_groups must be >= 1, got {num_groups}")
  n = 0
  for _, module in nnx.iter_modules(model):
    if isinstance(module, BatchNorm):
      module.num_groups = num_groups
      n += 1
  return n
