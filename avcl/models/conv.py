"""Convolution factories shared by the encoders: channels-last, no bias (a BatchNorm follows), He init.

Channels-last (NWC / NHWC) is XLA's fast convolution layout on TPU and GPU. Kernels are float32
parameters; `dtype` is the compute dtype (bfloat16 halves activation memory and uses the MXU / tensor
cores at full rate).
"""
import dataclasses
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


# config.model.cpu_conv_library: the library XLA:CPU runs convolutions (and their gradients) with. "ynnpack" is
# XLA's own default (jaxlib 0.10: YNNPACK fusions for convolutions, dots and elementwise neighbours); "eigen"
# keeps YNNPACK for the dots only, so that convolutions go to XLA's Eigen kernels. Why: on the 2-core AMD EPYC
# (AVX-512) Eigen ran the kernel gradient of a 3x3 convolution 1.2-3.4x faster than YNNPACK at 8-256 channels
# (32 x 96 x 64 x 32: 79 vs 128 ms; 32 x 48 x 32 x 128: 90 vs 273 ms; one shape, 16 channels on a 75 x 32 map,
# 0.87x), the default train step 1.05-1.12x and ResNetAudio at width 64 1.92x faster (benchmarks/README.md,
# "After model.cpu_conv_library"). A compile option of the train step (avcl.train.make_trainer), not an op of
# the program: the step's HLO is the same, only XLA:CPU's choice of kernels differs (values and gradients agree
# to float32 rounding, tests/test_models.py). Other backends ignore it; evaluation keeps XLA's default.
CPU_CONV_LIBRARIES = ("eigen", "ynnpack")
_YNN_FUSION_TYPES = {"eigen": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compiler_options(cpu_conv_library: str, platform: str) -> dict[str, str] | None:
  """`jax.jit(..., compiler_options=)` for a step compiled for `platform` ("cpu", "gpu", "tpu").

  None (XLA's defaults) off the CPU, or for "ynnpack"; for "eigen", XLA:CPU's YNNPACK fusion types narrowed
  to single dots (DebugOptions.xla_cpu_experimental_ynn_fusion_type), which sends convolutions to Eigen.
  """
  if cpu_conv_library not in CPU_CONV_LIBRARIES:
    raise ValueError(f"cpu_conv_library must be one of {CPU_CONV_LIBRARIES}, got {cpu_conv_library!r}")
  if platform != "cpu" or cpu_conv_library not in _YNN_FUSION_TYPES:
    return None
  return {"xla_cpu_experimental_ynn_fusion_type": _YNN_FUSION_TYPES[cpu_conv_library]}


# Default of `im2col_max_positions` (config `model.im2col_max_positions`): output maps with at most this many
# positions are convolved as one matmul over explicit patches (im2col).
IM2COL_MAX_POSITIONS = 4


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, *,
                         im2col_max_positions: int = IM2COL_MAX_POSITIONS, **kwargs):
  """`jax.lax.conv_general_dilated`, except 2-D channels-last convolutions onto tiny output maps.

  Why: XLA:CPU's convolution kernels run a 3x3 conv onto a 2x2 map (the default video encoder's last
  stage at 32 px) at ~4% of the matmul rate, forward and backward (benchmarks/step_profile.py); the same
  sums as one [batch * positions, kh * kw * cin] @ [kh * kw * cin, cout] matmul over the (zero-padded)
  patches take a fifth of the time. Larger maps keep XLA's kernels: there the patch copies cost more than
  they save. Same arguments as lax's; lhs [n, h, w, cin], rhs [kh, kw, cin, cout] in the fast path.
  im2col_max_positions: the largest output map (positions) convolved by im2col; 0: XLA's kernel always.
  """
  def lax_conv():
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, precision=precision,
                                        **kwargs)

  if lhs.ndim != 4:  # 1-D (waveform) and 3-D convolutions: lax.
    return lax_conv()
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  ones = (None, (1, 1), [1, 1])
  if (feature_group_count != 1 or lhs_dilation not in ones or rhs_dilation not in ones
      or jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc
      or any(v is not None for v in kwargs.values())):
    return lax_conv()
  kh, kw, cin, cout = rhs.shape
  strides = tuple(window_strides)
  pads = (jax.lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), strides, padding) if isinstance(padding, str)
          else [tuple(p) for p in padding])
  out = [(size + lo + hi - k) // s + 1 for size, (lo, hi), k, s in zip(lhs.shape[1:3], pads, (kh, kw), strides)]
  if min(out) < 1 or out[0] * out[1] > im2col_max_positions:
    return lax_conv()
  x = jnp.pad(lhs, ((0, 0), pads[0], pads[1], (0, 0)))
  (sh, sw), (oh, ow) = strides, out
  patches = jnp.concatenate([x[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]
                             for i in range(kh) for j in range(kw)], axis=-1)  # [n, oh, ow, kh*kw*cin]
  return jnp.dot(patches, rhs.reshape(kh * kw * cin, cout), precision=precision)


@dataclasses.dataclass(frozen=True)
class ConvImpl:
  """The convolution an nnx.Conv calls, with its speed options as fields.

  A frozen dataclass rather than a closure or functools.partial: nnx keeps it in the module's static
  graph definition, where it must compare by value (two models built with the same options have equal
  graphdefs, so jit caches and checkpoint structure do not depend on object identity).
  """
  im2col_max_positions: int = IM2COL_MAX_POSITIONS

  def __call__(self, *args, **kwargs):
    return conv_general_dilated(*args, im2col_max_positions=self.im2col_max_positions, **kwargs)


def conv(in_features: int, out_features: int, kernel: Sequence[int], *, strides=1, padding="SAME",
         dilation=1, dtype=jnp.float32, rngs: nnx.Rngs) -> nnx.Conv:
  """An N-d convolution (N = len(kernel)) over [batch, *spatial, in_features], without bias.

  Built with the default ConvImpl; `set_speed_options` (avcl.models.model) changes it on a built model.
  """
  return nnx.Conv(in_features, out_features, tuple(kernel), strides=strides, padding=padding,
                  kernel_dilation=dilation, use_bias=False, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=he_normal, conv_general_dilated=ConvImpl(), rngs=rngs)
