"""A 2D ResNet over log-mel [time, mel]: the ResNet option for the log-mel encoder (`model.logmel.name="resnet"`).

Our design (no single reference): PANNs' input normalisation (bn0 over mel bins), a 3x3 stem
(conv, BN, ReLU) at full resolution, then `depth` stages of `blocks` basic residual blocks
(post-activation ResNet v1: 3x3 conv, BN, ReLU, 3x3 conv, BN with zero-initialised scale, + shortcut,
ReLU), channels width * 2^i, stride 2 (time and mel) at the start of every stage but the first; the
shortcut is a strided 1x1 conv + BN when the shape changes. Pooling as PANNs: mean over mel, then
max + mean over time. depth 4, blocks 2 is a ResNet18-like layout without the 7x7 stem and max-pool
(log-mels are small images: 64 mel bins).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from avcl import config_check
from avcl.models.batch_norm import BatchNorm
from avcl.models.conv import conv
from avcl.models.pooling import max_plus_mean_over_time
from avcl.models.stack import run_blocks

NAME = "resnet"  # config.model.logmel.name
SLOT = "logmel"


def check_config(c: config_check.Checker, named: bool) -> None:
  """Its fields of config.model.logmel (`c`): checked whichever log-mel encoder is named, as every field of
  configs/default.py is; named: the slot names this encoder."""
  del named  # No limit of its own beyond the fields' ranges.
  c.integer("width", 1)
  c.integer("depth", 1)
  c.integer("blocks", 1)


def build(cfg, audio_cfg, **common) -> "ResNetAudio":
  return ResNetAudio(n_mels=audio_cfg.n_mels, width=cfg.width, depth=cfg.depth, blocks=cfg.blocks, **common)


class BasicBlock2d(nnx.Module):
  """[b, t, f, cin] -> [b, ceil(t / stride), ceil(f / stride), cout]."""

  def __init__(self, cin: int, cout: int, *, stride: int, dtype, bn_groups: int, rngs: nnx.Rngs):
    self.conv1 = conv(cin, cout, (3, 3), strides=stride, dtype=dtype, rngs=rngs)
    self.bn1 = BatchNorm(cout, num_groups=bn_groups)
    self.conv2 = conv(cout, cout, (3, 3), dtype=dtype, rngs=rngs)
    # Zero-initialised last scale: each block starts as the identity, which eases optimisation.
    self.bn2 = BatchNorm(cout, num_groups=bn_groups, scale_init=0.0)
    if stride != 1 or cin != cout:
      self.proj = conv(cin, cout, (1, 1), strides=stride, dtype=dtype, rngs=rngs)
      self.proj_bn = BatchNorm(cout, num_groups=bn_groups)
    else:
      self.proj = None
      self.proj_bn = None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = jax.nn.relu(self.bn1(self.conv1(x), train=train))
    y = self.bn2(self.conv2(y), train=train)
    shortcut = x if self.proj is None else self.proj_bn(self.proj(x), train=train)
    return jax.nn.relu(y + shortcut)


class ResNetAudio(nnx.Module):
  """Log-mel ResNet: [batch, frames, mels] -> [batch, feature_dim] (feature_dim = width * 2^(depth-1))."""

  def __init__(self, *, n_mels: int, width: int = 64, depth: int = 4, blocks: int = 2, dtype=jnp.float32,
               bn_groups: int = 1, remat: bool = False, rngs: nnx.Rngs):
    self.n_mels = n_mels
    self.dtype = dtype
    self.remat = remat
    self.bn0 = BatchNorm(n_mels, num_groups=bn_groups)
    self.stem = conv(1, width, (3, 3), dtype=dtype, rngs=rngs)
    self.stem_bn = BatchNorm(width, num_groups=bn_groups)
    layers, cin = [], width
    for i in range(depth):
      for j in range(blocks):
        cout = width * 2 ** i
        layers.append(BasicBlock2d(cin, cout, stride=2 if (i > 0 and j == 0) else 1, dtype=dtype,
                                   bn_groups=bn_groups, rngs=rngs))
        cin = cout
    self.blocks = nnx.List(layers)
    self.feature_dim = cin

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if x.ndim != 3 or x.shape[-1] != self.n_mels:
      raise ValueError(f"resnet expects log-mel [batch, frames, {self.n_mels}], got shape {x.shape}")
    x = self.bn0(x, train=train).astype(self.dtype)[..., None]  # [b, t, f, 1]
    x = jax.nn.relu(self.stem_bn(self.stem(x), train=train))
    x = run_blocks(self.blocks, x, remat=self.remat, train=train)
    x = jnp.mean(x.astype(jnp.float32), axis=2)  # mean over mel: [b, t, c]
    return max_plus_mean_over_time(x)


ENCODER = ResNetAudio  # What build returns.
