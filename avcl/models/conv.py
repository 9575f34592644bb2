"""Convolution factories shared by the encoders: channels-last, no bias (a BatchNorm follows), He init.

Channels-last (NWC / NHWC) is XLA's fast convolution layout on TPU and GPU. Kernels are float32
parameters; `dtype` is the compute dtype (bfloat16 halves activation memory and uses the MXU / tensor
cores at full rate).
"""
from typing import Sequence

import jax.numpy as jnp
from flax import nnx

# He (Kaiming) normal over fan-in: keeps activation variance constant through ReLU layers.
he_normal = nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


def conv(in_features: int, out_features: int, kernel: Sequence[int], *, strides=1, padding="SAME",
         dilation=1, dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Conv:
  """An N-d convolution (N = len(kernel)) over [batch, *spatial, in_features], without bias."""
  return nnx.Conv(in_features, out_features, tuple(kernel), strides=strides, padding=padding,
                  kernel_dilation=dilation, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=he_normal, rngs=rngs)
