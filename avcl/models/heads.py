"""Projection heads into the contrastive space, and L2 normalisation (all float32).

The head is SimCLR's: Linear -> BN -> ReLU -> Linear (or one Linear when `hidden` is 0). It runs in
float32 whatever the encoders' compute dtype: it is cheap, and the contrastive logits (cosine / T with
T ~ 0.1) amplify rounding error in the embeddings.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from avcl.models.batch_norm import BatchNorm
from avcl.models.conv import he_normal, lecun_normal


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
  """x / max(||x||, eps) in float32. x: [batch, d] -> [batch, d] with unit rows."""
  x = x.astype(jnp.float32)
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, eps)


class ProjectionHead(nnx.Module):
  """[batch, in_features] -> [batch, out_features] (not normalised)."""

  def __init__(self, in_features: int, out_features: int, *, hidden: int, bn_groups: int = 1,
               rngs: nnx.Rngs):
    if hidden < 0:
      raise ValueError(f"head hidden width must be >= 0, got {hidden}")
    self.hidden = hidden
    f32 = dict(dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)
    if hidden:
      # No bias before BN: BN's own bias makes it redundant.
      self.fc1 = nnx.Linear(in_features, hidden, use_bias=False, kernel_init=he_normal, **f32)
      self.bn = BatchNorm(hidden, num_groups=bn_groups)
      self.fc2 = nnx.Linear(hidden, out_features, kernel_init=lecun_normal, **f32)
    else:
      self.fc1 = None
      self.bn = None
      self.fc2 = nnx.Linear(in_features, out_features, kernel_init=lecun_normal, **f32)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = x.astype(jnp.float32)
    if self.hidden:
      x = jax.nn.relu(self.bn(self.fc1(x), train=train))
    return self.fc2(x)
