"""Convolution factories shared by the encoders: channels-last, no bias (a BatchNorm follows), He init.

Channels-last (NWC / NHWC) is XLA's fast convolution layout on TPU and GPU. Kernels are float32
parameters; `dtype` is the compute dtype (bfloat16 halves activation memory and uses the MXU / tensor
cores at full rate).
"""
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _bucketed_normal(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """Standard normal samples of `shape`, drawn as the first prod(shape) of a power-of-two-long draw.

  Why: eager initialisation compiles one threefry kernel per distinct draw length (~1 s each on a CPU),
  and a model has dozens of parameter shapes; rounding the length up to a power of two leaves a handful
  of kernels, cached across models. The samples are i.i.d. normal all the same.
  """
  n = math.prod(shape)
  size = 1 << max(0, (n - 1).bit_length())
  return jax.random.normal(key, (size,), jnp.float32)[:n].reshape(shape)


def he_normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """He (Kaiming) normal over fan-in, std sqrt(2 / fan_in): keeps activation variance through ReLUs.

  Kernels are [*spatial, in, out] (convolutions) or [in, out] (dense): fan_in = prod(shape[:-1]).
  """
  fan_in = math.prod(shape[:-1])
  return (_bucketed_normal(key, shape) * math.sqrt(2.0 / fan_in)).astype(dtype)


def lecun_normal(key: jax.Array, shape: Sequence[int], dtype=jnp.float32) -> jax.Array:
  """LeCun normal, std sqrt(1 / fan_in): for layers not followed by a ReLU (the head's output)."""
  fan_in = math.prod(shape[:-1])
  return (_bucketed_normal(key, shape) * math.sqrt(1.0 / fan_in)).astype(dtype)


def conv(in_features: int, out_features: int, kernel: Sequence[int], *, strides=1, padding="SAME",
         dilation=1, dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Conv:
  """An N-d convolution (N = len(kernel)) over [batch, *spatial, in_features], without bias."""
  return nnx.Conv(in_features, out_features, tuple(kernel), strides=strides, padding=padding,
                  kernel_dilation=dilation, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=he_normal, rngs=rngs)
