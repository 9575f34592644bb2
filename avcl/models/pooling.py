"""Pooling helpers (pure functions on channels-last arrays)."""
import jax
import jax.numpy as jnp


def avg_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """Non-overlapping average pooling (stride = window), flooring like PyTorch's avg_pool.

  x: [batch, *spatial, channels] with len(spatial) == len(window) -> [batch, *spatial // window, c].
  """
  return _pool(x, window, jnp.mean)


def max_pool(x: jax.Array, window: tuple[int, ...]) -> jax.Array:
  """Non-overlapping max pooling (stride = window), flooring. Shapes as `avg_pool`."""
  return _pool(x, window, jnp.max)


def _pool(x, window, reduce):
  spatial = x.shape[1:-1]
  if len(spatial) != len(window):
    raise ValueError(f"pooling window {window} does not match spatial shape {spatial}")
  out = [s // w for s, w in zip(spatial, window)]
  if min(out) < 1:
    raise ValueError(f"input too short to pool: spatial shape {spatial}, window {window}")
  x = x[(slice(None),) + tuple(slice(0, o * w) for o, w in zip(out, window))]
  split = [x.shape[0]]
  for o, w in zip(out, window):
    split += [o, w]
  x = x.reshape(split + [x.shape[-1]])
  return reduce(x, axis=tuple(range(2, 2 * len(window) + 1, 2)))


def smooth_time(x: jax.Array) -> jax.Array:
  """PANNs' CNN14 temporal smoothing: max_pool1d(3, 1, pad 1) + avg_pool1d(3, 1, pad 1).

  As PyTorch does, the max pool pads with -inf and the average pool counts the zero padding
  (count_include_pad=True), so edge frames are divided by 3. x: [batch, time, c] -> same shape.
  """
  t = x.shape[1]
  pad_max = jnp.pad(x, ((0, 0), (1, 1), (0, 0)), constant_values=-jnp.inf)
  pad_avg = jnp.pad(x, ((0, 0), (1, 1), (0, 0)))
  mx = jnp.maximum(jnp.maximum(pad_max[:, :t], pad_max[:, 1:t + 1]), pad_max[:, 2:t + 2])
  av = (pad_avg[:, :t] + pad_avg[:, 1:t + 1] + pad_avg[:, 2:t + 2]) / 3
  return mx + av


def max_plus_mean_over_time(x: jax.Array) -> jax.Array:
  """PANNs' global pooling: max over time plus mean over time. x: [batch, time, c] -> [batch, c]."""
  return jnp.max(x, axis=1) + jnp.mean(x, axis=1)
