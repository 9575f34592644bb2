"""TSM-ResNet video encoder (Lin et al. 2019 temporal shift; as the video tower of MMV, Alayrac et al. 2020).

Layout: frames [b, t, h, w, 3] (NHWC per frame); the 2D convolutions run on [b * t, h, w, c] and the
temporal shift reshapes back to [b, t, h, w, c]. Following MMV's TSM-ResNet (pre-activation ResNet v2):
  stem: 7x7 conv (no BN after it; the first block's pre-activation normalises)
  stages: channels width * 2^i (i = 0..len(blocks)-1), stride 1 then 2 per stage; each block is
    pre-activation: BN -> ReLU -> [projection shortcut when shape changes] -> temporal shift of the
    residual branch -> convs (bottleneck: 1x1, 3x3 (strided), 1x1 to 4x channels; basic: 3x3 (strided),
    3x3), with BN -> ReLU between them; output = shortcut + residual.
  head: BN -> ReLU -> mean over time, height and width.
Full size (MMV's TSM-ResNet50): width 64, blocks (3, 4, 6, 3), bottleneck True, shift_fraction 0.125
(1/8 of the channels shifted each way), feature dim 2048.

Low-resolution stem rule (ours; MMV used 200-224 px): the stem's downsampling depends on the shorter
frame side s, so the last stage still sees >= 2x2 positions at 16-112 px:
  s >= 96: 7x7 stride-2 conv + 3x3 stride-2 max-pool (the standard ResNet stem, /4);
  32 <= s < 96: 7x7 stride-2 conv, no max-pool (/2);
  s < 32: 7x7 stride-1 conv, no max-pool (/1).
The rule changes no parameter, so one model runs at every resolution.
"""
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from avcl import config_check
from avcl.models.batch_norm import BatchNorm
from avcl.models.conv import conv
from avcl.models.stack import run_blocks

NAME = "tsm_resnet"  # config.model.video.name
SLOT = "video"


def check_config(c: config_check.Checker, named: bool) -> None:
  """Its fields of config.model.video (`c`); named: the slot names this encoder."""
  del named  # Checked whether or not the video slot is used, as every field of configs/default.py is.
  c.integer("width", 1)
  c.check("blocks", lambda v: isinstance(v, (tuple, list)) and len(v) >= 1
          and all(config_check.is_int(b) and b >= 1 for b in v),
          "be a non-empty tuple of integers >= 1 (blocks per stage)")
  c.boolean("bottleneck")
  c.real("shift_fraction", 0, 0.5)


def build(cfg, audio_cfg, **common) -> "TSMResNet":
  del audio_cfg  # The video encoder reads no frontend setting.
  return TSMResNet(width=cfg.width, blocks=tuple(cfg.blocks), bottleneck=cfg.bottleneck,
                   shift_fraction=cfg.shift_fraction, **common)


def temporal_shift(x: jax.Array, shift_fraction: float) -> jax.Array:
  """Temporal shift as MMV's `temporal_shift_gpu`: x [b, t, h, w, c] -> same shape.

  With n = int(c * shift_fraction): channels [:n] take the next frame's values (out[t] = x[t + 1], zero
  at the last frame); channels [c - n:] take the previous frame's (out[t] = x[t - 1], zero at the first);
  the rest are unchanged.
  """
  c = x.shape[-1]
  n = int(c * shift_fraction)
  if n == 0:
    return x
  if 2 * n > c:
    raise ValueError(f"shift_fraction {shift_fraction} shifts more than all {c} channels")
  pad = [(0, 0)] * x.ndim
  back = jnp.pad(x[:, 1:, ..., :n], pad[:1] + [(0, 1)] + pad[2:])
  fwd = jnp.pad(x[:, :-1, ..., c - n:], pad[:1] + [(1, 0)] + pad[2:])
  return jnp.concatenate([back, x[..., n:c - n], fwd], axis=-1)


class TSMBlock(nnx.Module):
  """Pre-activation residual block with a temporal shift. [b*t, h, w, cin] -> [b*t, h', w', cout]."""

  def __init__(self, cin: int, channels: int, *, stride: int, bottleneck: bool, shift_fraction: float,
               dtype, bn_groups: int, rngs: nnx.Rngs):
    cout = 4 * channels if bottleneck else channels
    self.stride = stride
    self.bottleneck = bottleneck
    self.shift_fraction = shift_fraction
    self.pre_bn = BatchNorm(cin, num_groups=bn_groups)
    self.projection = (conv(cin, cout, (1, 1), strides=stride, dtype=dtype, rngs=rngs)
                       if stride != 1 or cin != cout else None)
    if bottleneck:
      self.convs = nnx.List([conv(cin, channels, (1, 1), dtype=dtype, rngs=rngs),
                             conv(channels, channels, (3, 3), strides=stride, dtype=dtype, rngs=rngs),
                             conv(channels, cout, (1, 1), dtype=dtype, rngs=rngs)])
    else:
      self.convs = nnx.List([conv(cin, channels, (3, 3), strides=stride, dtype=dtype, rngs=rngs),
                             conv(channels, cout, (3, 3), dtype=dtype, rngs=rngs)])
    self.bns = nnx.List([BatchNorm(c.out_features, num_groups=bn_groups) for c in self.convs[:-1]])
    self.out_features = cout

  def __call__(self, x: jax.Array, *, num_frames: int, train: bool) -> jax.Array:
    preact = jax.nn.relu(self.pre_bn(x, train=train))
    shortcut = x if self.projection is None else self.projection(preact)
    y = preact
    if self.shift_fraction:
      y = temporal_shift(y.reshape((-1, num_frames) + y.shape[1:]), self.shift_fraction)
      y = y.reshape((-1,) + y.shape[2:])
    y = self.convs[0](y)
    for bn, c in zip(self.bns, self.convs[1:]):
      y = c(jax.nn.relu(bn(y, train=train)))
    return shortcut + y


def stem_downsampling(size: int) -> tuple[int, bool]:
  """The low-resolution stem rule: shorter frame side in px -> (conv stride, use max-pool)."""
  if size >= 96:
    return 2, True
  if size >= 32:
    return 2, False
  return 1, False


class TSMResNet(nnx.Module):
  """Video encoder: frames [batch, time, height, width, 3] (normalised) -> [batch, feature_dim]."""

  def __init__(self, *, width: int = 64, blocks: Sequence[int] = (3, 4, 6, 3), bottleneck: bool = True,
               shift_fraction: float = 0.125, dtype=jnp.float32, bn_groups: int = 1,
               remat: bool = False, rngs: nnx.Rngs):
    self.dtype = dtype
    self.remat = remat
    self.stem = conv(3, width, (7, 7), dtype=dtype, rngs=rngs)
    layers, cin = [], width
    for i, n in enumerate(blocks):
      for j in range(n):
        blk = TSMBlock(cin, width * 2 ** i, stride=2 if (i > 0 and j == 0) else 1, bottleneck=bottleneck,
                       shift_fraction=shift_fraction, dtype=dtype, bn_groups=bn_groups, rngs=rngs)
        layers.append(blk)
        cin = blk.out_features
    self.blocks = nnx.List(layers)
    self.final_bn = BatchNorm(cin, num_groups=bn_groups)
    self.feature_dim = cin

  def feature_map(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Frames [b, t, h, w, 3] -> last-stage activations [b, t, h', w', feature_dim] (after final BN, ReLU)."""
    if x.ndim != 5 or x.shape[-1] != 3:
      raise ValueError(f"tsm_resnet expects video [batch, time, height, width, 3], got shape {x.shape}")
    b, t, h, w, _ = x.shape
    stride, pool = stem_downsampling(min(h, w))
    x = x.astype(self.dtype).reshape(b * t, h, w, 3)
    # The stem's stride is chosen per input size (parameters are the same), so it is applied here.
    x = jax.lax.conv_general_dilated(
        x, self.stem.kernel[...].astype(self.dtype), (stride, stride), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if pool:
      # A Python scalar init value: an array init makes reduce_window non-differentiable in JAX.
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")
    x = run_blocks(self.blocks, x, remat=self.remat, num_frames=t, train=train)
    x = jax.nn.relu(self.final_bn(x, train=train))
    return x.reshape((b, t) + x.shape[1:])

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Frames [b, t, h, w, 3] -> [b, feature_dim]: mean over time, height and width (in float32)."""
    return jnp.mean(self.feature_map(x, train=train).astype(jnp.float32), axis=(1, 2, 3))


ENCODER = TSMResNet  # What build returns.
