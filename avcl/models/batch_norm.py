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
large batches lose too much precision. The output is cast back to the input's dtype.
"""
import jax
import jax.numpy as jnp
from flax import nnx


class BatchNorm(nnx.Module):
  """BatchNorm over every axis but the last (features).

  Train mode normalises with batch statistics (per group when `num_groups` > 1) and updates the running
  averages with the mean over groups of the group statistics (what averaging per-device running stats
  gives); eval mode normalises with the running averages.
  """

  def __init__(self, features: int, *, momentum: float = 0.99, epsilon: float = 1e-5,
               num_groups: int = 1, scale_init: float = 1.0):
    if num_groups < 1:
      raise ValueError(f"BatchNorm num_groups must be >= 1, got {num_groups}")
    self.features = features
    self.momentum = momentum
    self.epsilon = epsilon
    self.num_groups = num_groups
    self.scale = nnx.Param(jnp.full((features,), scale_init, jnp.float32))
    self.bias = nnx.Param(jnp.zeros((features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((features,), jnp.float32))

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """x: [batch, ..., features] -> same shape and dtype."""
    if x.shape[-1] != self.features:
      raise ValueError(f"BatchNorm expects {self.features} features on the last axis, got shape {x.shape}")
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if train:
      g, b = self.num_groups, x.shape[0]
      if b % g:
        raise ValueError(f"BatchNorm with num_groups={g} (per-device statistics, model.bn_sync=False) "
                         f"needs a batch divisible by {g}, got batch {b}")
      xg = x.reshape((g, b // g) + x.shape[1:])
      axes = tuple(range(1, xg.ndim - 1))
      mean = jnp.mean(xg, axis=axes, keepdims=True)
      # Two-pass variance: E[(x - mean)^2] does not cancel catastrophically like E[x^2] - mean^2.
      var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
      y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
      m = self.momentum
      self.mean[...] = m * self.mean[...] + (1 - m) * mean.reshape(g, -1).mean(0)
      self.var[...] = m * self.var[...] + (1 - m) * var.reshape(g, -1).mean(0)
    else:
      y = (x - self.mean[...]) * jax.lax.rsqrt(self.var[...] + self.epsilon)
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
