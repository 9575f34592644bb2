"""PANNs Res1dNet31 (Kong et al. 2020) over raw waveform, with width and depth knobs.

Architecture as we reconstruct PANNs' Res1dNet31 (written from memory of the paper and its code, not
copied). Two checks support the reconstruction: the layer count, 31 = conv0 + 7 stages x 2 blocks x
2 convs + fc1 + fc_audioset, and the parameter count: 79.38M here (measured with nnx.eval_shape,
tests/test_models.py) + 1.08M for the 527-way AudioSet classifier = 80.46M vs PANNs' reported 80.4M.
  wave [b, samples] -> conv0 (kernel 11, stride 5, padding 5, no bias) -> bn0 (no ReLU)
  -> stages s = 0..depth-1 of 2 basic blocks; channels width * (1, 2, 4, 8, 16, 16, 32)[s]
     (full size width 64: 64, 128, 256, 512, 1024, 1024, 2048), stride (1, 4, 4, 4, 4, 4, 4)[s];
     block: [max_pool1d(stride) when strided] -> conv k3 (dilation 1) -> BN -> ReLU -> conv k3
     (dilation 2) -> BN (scale initialised to 0) ; shortcut: [avg_pool1d(stride)] -> 1x1 conv -> BN
     when the shape changes ; out = ReLU(residual + shortcut)
  -> max + mean over time -> fc1 (C -> C) + ReLU: the embedding layer, this encoder's feature.
Approximate (details we are not certain PANNs has exactly): the dilation 2 of each block's second conv,
max- (rather than average-) pooling at the block input, the zero-initialised last BN scale, and the
global pooling (max + mean over time as CNN14). Not reproduced: dropout (0.1 in blocks, 0.5 around fc1)
and the AudioSet classifier. PANNs ran at 32 kHz; at our 16 kHz an output frame spans twice the time,
and the full 7-stage network needs >= 20476 samples (1.28 s) — a clear error below that.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from avcl import config_check
from avcl.models.batch_norm import BatchNorm
from avcl.models.conv import conv, he_normal
from avcl.models.pooling import avg_pool, max_plus_mean_over_time, max_pool
from avcl.models.stack import run_blocks

CHANNEL_MULTIPLIERS = (1, 2, 4, 8, 16, 16, 32)
STRIDES = (1, 4, 4, 4, 4, 4, 4)
MAX_DEPTH = len(STRIDES)
NAME = "res1dnet31"  # config.model.wave.name
SLOT = "wave"


def check_config(c: config_check.Checker, named: bool) -> None:
  """Its fields of config.model.wave (`c`); named: the slot names this encoder (its own limits apply)."""
  c.integer("width", 1)
  c.integer("depth", 1, MAX_DEPTH if named else None, why=f" for {NAME}" if named else "")


def build(cfg, audio_cfg, **common) -> "Res1dNet":
  del audio_cfg  # The waveform encoder reads no frontend setting.
  return Res1dNet(width=cfg.width, depth=cfg.depth, **common)


class BasicBlock1d(nnx.Module):
  """[b, t, cin] -> [b, t // stride, cout]."""

  def __init__(self, cin: int, cout: int, *, stride: int, dtype, bn_groups: int, rngs: nnx.Rngs):
    self.stride = stride
    self.conv1 = conv(cin, cout, (3,), dtype=dtype, rngs=rngs)
    self.bn1 = BatchNorm(cout, num_groups=bn_groups)
    self.conv2 = conv(cout, cout, (3,), dilation=2, dtype=dtype, rngs=rngs)
    self.bn2 = BatchNorm(cout, num_groups=bn_groups, scale_init=0.0)
    if stride != 1 or cin != cout:
      self.proj = conv(cin, cout, (1,), dtype=dtype, rngs=rngs)
      self.proj_bn = BatchNorm(cout, num_groups=bn_groups)
    else:
      self.proj = None
      self.proj_bn = None

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = max_pool(x, (self.stride,)) if self.stride != 1 else x
    y = jax.nn.relu(self.bn1(self.conv1(y), train=train))
    y = self.bn2(self.conv2(y), train=train)
    if self.proj is None:
      shortcut = x
    else:
      s = avg_pool(x, (self.stride,)) if self.stride != 1 else x
      shortcut = self.proj_bn(self.proj(s), train=train)
    return jax.nn.relu(y + shortcut)


def min_samples(depth: int) -> int:
  """Fewest samples for which every stage of a depth-`depth` Res1dNet still has >= 1 frame."""
  frames = 1
  for s in STRIDES[1:depth]:
    frames *= s
  return 5 * (frames - 1) + 1  # conv0: floor((n + 2 * 5 - 11) / 5) + 1 frames


class Res1dNet(nnx.Module):
  """Waveform encoder: [batch, samples] -> [batch, feature_dim]."""

  def __init__(self, *, width: int = 64, depth: int = 7, dtype=jnp.float32, bn_groups: int = 1,
               remat: bool = False, rngs: nnx.Rngs):
    if not 1 <= depth <= MAX_DEPTH:
      raise ValueError(f"config.model.wave.depth must be in [1, {MAX_DEPTH}] for res1dnet31, got {depth}")
    self.dtype = dtype
    self.remat = remat
    self.depth = depth
    self.conv0 = conv(1, width, (11,), strides=5, padding=((5, 5),), dtype=dtype, rngs=rngs)
    self.bn0 = BatchNorm(width, num_groups=bn_groups)
    layers, cin = [], width
    for s in range(depth):
      cout = width * CHANNEL_MULTIPLIERS[s]
      for j in range(2):
        layers.append(BasicBlock1d(cin, cout, stride=STRIDES[s] if j == 0 else 1, dtype=dtype,
                                   bn_groups=bn_groups, rngs=rngs))
        cin = cout
    self.blocks = nnx.List(layers)
    self.feature_dim = cin
    self.fc = nnx.Linear(cin, cin, dtype=dtype, param_dtype=jnp.float32, kernel_init=he_normal, rngs=rngs)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return jax.nn.relu(self.fc(self.pooled(x, train=train).astype(self.dtype))).astype(jnp.float32)

  def pooled(self, x: jax.Array, *, train: bool) -> jax.Array:
    """The globally pooled conv features before `fc`: [batch, samples] -> f32[batch, feature_dim]."""
    if x.ndim != 2:
      raise ValueError(f"res1dnet31 expects wave [batch, samples], got shape {x.shape}")
    if x.shape[1] < min_samples(self.depth):
      raise ValueError(f"res1dnet31 with depth {self.depth} needs >= {min_samples(self.depth)} samples, "
                       f"got wave of {x.shape[1]}")
    x = self.bn0(self.conv0(x.astype(self.dtype)[..., None]), train=train)
    x = run_blocks(self.blocks, x, remat=self.remat, train=train)
    return max_plus_mean_over_time(x.astype(jnp.float32))


ENCODER = Res1dNet  # What build returns.
