"""PANNs CNN14 (Kong et al. 2020, "PANNs: Large-scale pretrained audio neural networks") over log-mel.

Architecture, following PANNs' Cnn14:
  log-mel [b, frames, mels] -> bn0 (BatchNorm over mel bins, statistics over batch and time)
  -> `depth` ConvBlocks: (3x3 conv, BN, ReLU) x 2 then 2x2 average pooling; channels width * 2^i
     (full size: width 64, depth 6 -> 64 ... 2048). PANNs pools 2x2 in blocks 1-5 and 1x1 in the sixth;
     our rule for any depth: every block but the last pools 2x2 (identical at depth 6).
  -> mean over mel -> temporal smoothing max_pool1d(3)+avg_pool1d(3) -> max + mean over time
  -> fc1 (C -> C) + ReLU: PANNs' 2048-d "embedding" layer; its output is this encoder's feature.
Not reproduced (the AudioSet-supervised parts): the 527-way `fc_audioset` classifier, dropout (0.2 after
each block, 0.5 before and after fc1), PANNs' built-in SpecAugment and mixup (avcl.augment does those).
Full size: 79.7M parameters here vs 80.8M for PANNs' Cnn14, the difference being the 1.08M-parameter
AudioSet classifier (see tests/test_models.py::test_full_size_cnn14_param_count).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from avcl import config_check
from avcl.models.batch_norm import BatchNorm
from avcl.models.conv import conv, he_normal
from avcl.models.pooling import avg_pool, max_plus_mean_over_time, smooth_time
from avcl.models.stack import run_blocks

NAME = "cnn14"  # config.model.logmel.name
SLOT = "logmel"
MAX_DEPTH = 8  # Blocks 1..depth-1 halve the mel axis: 8 blocks need 128 mel bins.


def check_config(c: config_check.Checker, named: bool) -> None:
  """Its fields of config.model.logmel (`c`); named: the slot names this encoder (its own limits apply)."""
  c.integer("width", 1)
  c.integer("depth", 1, MAX_DEPTH if named else None, why=f" for {NAME}" if named else "")


def build(cfg, audio_cfg, **common) -> "Cnn14":
  return Cnn14(n_mels=audio_cfg.n_mels, width=cfg.width, depth=cfg.depth, **common)


class ConvBlock(nnx.Module):
  """(3x3 conv, BN, ReLU) x 2, then optional 2x2 average pooling. [b, t, f, cin] -> [b, t', f', cout]."""

  def __init__(self, cin: int, cout: int, *, pool: bool, dtype, bn_groups: int, rngs: nnx.Rngs):
    self.pool = pool
    self.conv1 = conv(cin, cout, (3, 3), dtype=dtype, rngs=rngs)
    self.bn1 = BatchNorm(cout, num_groups=bn_groups)
    self.conv2 = conv(cout, cout, (3, 3), dtype=dtype, rngs=rngs)
    self.bn2 = BatchNorm(cout, num_groups=bn_groups)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = jax.nn.relu(self.bn1(self.conv1(x), train=train))
    x = jax.nn.relu(self.bn2(self.conv2(x), train=train))
    return avg_pool(x, (2, 2)) if self.pool else x


class Cnn14(nnx.Module):
  """CNN14 log-mel encoder: [batch, frames, mels] -> [batch, feature_dim] (feature_dim = width * 2^(depth-1))."""

  def __init__(self, *, n_mels: int, width: int = 64, depth: int = 6, dtype=jnp.float32,
               bn_groups: int = 1, remat: bool = False, rngs: nnx.Rngs):
    if n_mels < 2 ** (depth - 1):
      raise ValueError(f"cnn14 with depth {depth} pools the mel axis {depth - 1} times and needs "
                       f"config.audio.n_mels >= {2 ** (depth - 1)}, got {n_mels}")
    self.n_mels = n_mels
    self.dtype = dtype
    self.remat = remat
    self.bn0 = BatchNorm(n_mels, num_groups=bn_groups)
    channels = [width * 2 ** i for i in range(depth)]
    self.blocks = nnx.List([
        ConvBlock(cin, cout, pool=i < depth - 1, dtype=dtype, bn_groups=bn_groups, rngs=rngs)
        for i, (cin, cout) in enumerate(zip([1] + channels[:-1], channels))])
    self.feature_dim = channels[-1]
    self.fc = nnx.Linear(self.feature_dim, self.feature_dim, dtype=dtype, param_dtype=jnp.float32,
                         kernel_init=he_normal, rngs=rngs)
    self.min_frames = 2 ** (depth - 1)

  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    return jax.nn.relu(self.fc(self.pooled(x, train=train).astype(self.dtype)))

  def pooled(self, x: jax.Array, *, train: bool) -> jax.Array:
    """The globally pooled conv features before `fc`: [batch, frames, mels] -> f32[batch, feature_dim]."""
    x = jnp.mean(self.conv_map(x, train=train), axis=2)  # mean over frequency: [b, t, c]
    return max_plus_mean_over_time(smooth_time(x))

  def stats(self, x: jax.Array, *, train: bool) -> jax.Array:
    """Mean and standard deviation over time of the last conv map, frequency kept (probing only).

    [batch, frames, mels] -> f32[batch, stats_dim], stats_dim = 2 * (mels // 2^(depth-1)) * channels:
    the statistics the pooled log-mel baseline takes of each mel band, taken of each (frequency bin,
    channel) of the learned map, so that a probe compares features, not poolings. CNN14's own pooling
    averages the frequency axis away before any classifier sees it.
    """
    x = self.conv_map(x, train=train)  # [b, t, f, c]
    x = x.reshape(x.shape[0], x.shape[1], -1)
    mean = jnp.mean(x, axis=1)
    std = jnp.sqrt(jnp.mean(jnp.square(x - mean[:, None]), axis=1))
    return jnp.concatenate([mean, std], axis=-1)

  def conv_map(self, x: jax.Array, *, train: bool) -> jax.Array:
    """The last conv block's output: [batch, frames, mels] -> f32[batch, frames', mels', channels]."""
    if x.ndim != 3 or x.shape[-1] != self.n_mels:
      raise ValueError(f"cnn14 expects log-mel [batch, frames, {self.n_mels}], got shape {x.shape}")
    if x.shape[1] < self.min_frames:
      raise ValueError(f"cnn14 with {len(self.blocks)} blocks needs >= {self.min_frames} frames, "
                       f"got {x.shape[1]}")
    x = self.bn0(x, train=train)  # float32 statistics over batch and time, per mel bin
    x = x.astype(self.dtype)[..., None]  # [b, t, f, 1]
    return run_blocks(self.blocks, x, remat=self.remat, train=train).astype(jnp.float32)


ENCODER = Cnn14  # What build returns.
