"""Symmetric InfoNCE with negatives from the whole global batch.

For a pair of embeddings za, zb [B, d] (L2-normalised by the model heads) and temperature t, with
s_ij = za_i . zb_j / t:

    loss = 1/(2B) sum_i [ (logsumexp_j s_ij - s_ii) + (logsumexp_j s_ji - s_ii) ]

i.e. each clip's audio must pick its own video among all B videos of the global batch and vice versa.
Top-1 accuracy counts rows (both directions) whose largest score is their positive.

Sharded computation (`contrastive_loss` with a mesh): a `shard_map` over the mesh's data axis. Each
device holds b = B / n rows of za and zb and computes only its own rows of the similarity matrix (a->b
rows: its za against every zb; b->a rows: its zb against every za); the per-device sums are psum'd and
divided by the global count, so the result does not depend on the number of devices. Three
implementations of the row computation, equal to float32 rounding:

- "plain": all_gather the other side ([B, d]) and materialise the [b, B] row block. Memory O(b B).
- "tiled": all_gather, then walk the gathered columns in tiles of `tile_size` with an online
  log-sum-exp; a custom VJP recomputes each tile in the backward pass from the saved per-row
  log-sum-exp (as flash attention / Inf-CL do). Memory O(b tile + B d): the [b, B] block never exists.
- "ring": no all_gather; the other side's blocks travel around the ring with `lax.ppermute`
  (n - 1 hops forward; in the backward pass each block travels with its gradient accumulator and
  arrives home after n hops). Same online log-sum-exp and recomputing VJP. Memory O(b tile + b d).
"""
import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

IMPLS = ("plain", "tiled", "ring")
EMBEDDING_KEYS = ("logmel", "logmel2", "wave", "video")


# ----------------------------------------------------------------------------------------------------
# Global-view reference.
# ----------------------------------------------------------------------------------------------------
def info_nce(za: jax.Array, zb: jax.Array, temperature) -> tuple[jax.Array, jax.Array]:
  """Symmetric InfoNCE on the global view (the reference).

  Args:
    za, zb: f32[batch, dim]; row i of each is clip i (its positive pair).
    temperature: scalar (Python float or traced array; gradients flow to it).
  Returns:
    (loss, top1): scalars; top1 averages the a->b and b->a row accuracies.
  """
  dtype = jnp.promote_types(za.dtype, jnp.float32)
  za, zb = za.astype(dtype), zb.astype(dtype)
  logits = za @ zb.T / temperature  # [B, B]
  pos = jnp.diagonal(logits)
  loss_ab = jax.nn.logsumexp(logits, axis=1) - pos
  loss_ba = jax.nn.logsumexp(logits, axis=0) - pos
  labels = jnp.arange(za.shape[0])
  top1 = 0.5 * (jnp.mean(jnp.argmax(logits, axis=1) == labels)
                + jnp.mean(jnp.argmax(logits, axis=0) == labels))
  return 0.5 * (jnp.mean(loss_ab) + jnp.mean(loss_ba)), top1


# ----------------------------------------------------------------------------------------------------
# Row blocks: q [b, d] (this device's rows) against keys; each returns (sum of row losses, #correct).
# Row i's positive is key column `offset + i`.
# ----------------------------------------------------------------------------------------------------
def _rows_plain(q, keys, inv_t, offset):
  """Materialises logits [b, N]."""
  logits = (q @ keys.T) * inv_t
  cols = offset + jnp.arange(q.shape[0])
  pos = jnp.take_along_axis(logits, cols[:, None], axis=1)[:, 0]
  loss = jnp.sum(jax.nn.logsumexp(logits, axis=1) - pos)
  correct = jnp.sum(jnp.argmax(logits, axis=1) == cols).astype(jnp.float32)
  return loss, correct


def _tiles(keys, tile):
  """keys [N, d] -> ([n_tiles, tile, d] zero-padded, N)."""
  n, d = keys.shape
  tile = min(tile, n)
  n_tiles = -(-n // tile)
  if n_tiles * tile != n:
    keys = jnp.pad(keys, ((0, n_tiles * tile - n), (0, 0)))
  return keys.reshape(n_tiles, tile, d), n


def _online_lse_init(q):
  """(running max, running sum of exp, best score, best column) for q's rows.

  Built with *_like(q) so that inside shard_map the scan carries are device-varying like q.
  """
  col = q[:, 0]
  return (jnp.full_like(col, -jnp.inf), jnp.zeros_like(col), jnp.full_like(col, -jnp.inf),
          jnp.zeros_like(col, dtype=jnp.int32))


def _online_lse_update(state, q, key_tile, inv_t, col0, n_valid):
  """Folds one tile of columns [col0, col0 + tile) into (max, sum exp, best score, best column)."""
  m, l, best, best_col = state
  s = (q @ key_tile.T) * inv_t  # [b, tile]
  cols = (col0 + jnp.arange(key_tile.shape[0])).astype(jnp.int32)
  s = jnp.where(cols[None, :] < n_valid, s, -jnp.inf)  # Padding columns never count.
  m_new = jnp.maximum(m, jnp.max(s, axis=1))
  l = l * jnp.exp(m - m_new) + jnp.sum(jnp.exp(s - m_new[:, None]), axis=1)
  tile_best = jnp.max(s, axis=1)
  tile_col = cols[jnp.argmax(s, axis=1)]
  better = tile_best > best  # Strict: the first maximal column wins, as in argmax.
  return (m_new, l, jnp.where(better, tile_best, best), jnp.where(better, tile_col, best_col))


def _softmax_grads(q, key_tile, inv_t, lse, col0, n_valid):
  """For one tile: p = softmax rows restricted to it; returns (p @ keys, p^T @ q, sum p * q.k)."""
  raw = q @ key_tile.T  # [b, tile]
  cols = col0 + jnp.arange(key_tile.shape[0])
  p = jnp.where(cols[None, :] < n_valid, jnp.exp(raw * inv_t - lse[:, None]), 0.0)
  return p @ key_tile, p.T @ q, jnp.sum(p * raw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _rows_tiled(q, keys, inv_t, offset, tile):
  """Online log-sum-exp over column tiles of keys [N, d]; never holds more than [b, tile] scores."""
  return _rows_tiled_fwd(q, keys, inv_t, offset, tile)[0]


def _rows_tiled_fwd(q, keys, inv_t, offset, tile):
  key_tiles, n = _tiles(keys, tile)
  t = key_tiles.shape[1]

  def body(state, xs):
    i, key_tile = xs
    return _online_lse_update(state, q, key_tile, inv_t, i * t, n), None

  (m, l, _, best_col), _ = lax.scan(body, _online_lse_init(q),
                                    (jnp.arange(key_tiles.shape[0]), key_tiles))
  lse = m + jnp.log(l)
  k_pos = lax.dynamic_slice_in_dim(keys, offset, q.shape[0])
  pos_raw = jnp.sum(q * k_pos, axis=1)
  loss = jnp.sum(lse - pos_raw * inv_t)
  correct = jnp.sum(best_col == offset + jnp.arange(q.shape[0])).astype(jnp.float32)
  return (loss, correct), (q, keys, inv_t, offset, lse)


def _softmax_grads_over_tiles(q, key_tiles, n, inv_t, lse, dq, dinv):
  """Walks key tiles [n_tiles, tile, d] (n real rows) accumulating the softmax part of the gradient.

  Returns (dq + sum of tile contributions, dinv + ..., dkeys [n, d]); shared by the tiled and ring VJPs.
  """
  t = key_tiles.shape[1]

  def body(carry, xs):
    dq_, dinv_ = carry
    i, key_tile = xs
    pk, ptq, pqk = _softmax_grads(q, key_tile, inv_t, lse, i * t, n)
    return (dq_ + pk, dinv_ + pqk), ptq

  (dq, dinv), dk_tiles = lax.scan(body, (dq, dinv), (jnp.arange(key_tiles.shape[0]), key_tiles))
  return dq, dinv, dk_tiles.reshape(-1, key_tiles.shape[2])[:n]


def _rows_tiled_bwd(tile, res, cotangents):
  q, keys, inv_t, offset, lse = res
  g = cotangents[0]  # The accuracy output is not differentiable.
  key_tiles, n = _tiles(keys, tile)
  dq, dinv, dk = _softmax_grads_over_tiles(q, key_tiles, n, inv_t, lse,
                                           jnp.zeros_like(q), jnp.zeros_like(q, shape=()))
  # The positive term -s_ii: its gradient is -k_pos on q, -q on the positive columns.
  k_pos = lax.dynamic_slice_in_dim(keys, offset, q.shape[0])
  dq = dq - k_pos
  dk = lax.dynamic_update_slice_in_dim(dk, lax.dynamic_slice_in_dim(dk, offset, q.shape[0]) - q,
                                       offset, axis=0)
  dinv = dinv - jnp.sum(q * k_pos)
  scale = g * inv_t
  return dq * scale, dk * scale, (dinv * g).astype(jnp.result_type(inv_t)), None


_rows_tiled.defvjp(_rows_tiled_fwd, _rows_tiled_bwd)


def _ring_perm(n):
  return [(j, (j + 1) % n) for j in range(n)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _rows_ring(q, k_local, inv_t, axis, n, tile):
  """Rows of this device's q against every device's k block, blocks passed around the ring.

  Runs inside shard_map over `axis` (size n). Row i's positive is k_local[i]. At hop s this device
  holds the block of device (me - s) mod n.
  """
  return _rows_ring_fwd(q, k_local, inv_t, axis, n, tile)[0]


def _ring_block_tiles(block, tile):
  key_tiles, _ = _tiles(block, tile)
  return key_tiles, block.shape[0]


def _rows_ring_fwd(q, k_local, inv_t, axis, n, tile):
  me = lax.axis_index(axis)
  b = q.shape[0]

  def fold(state, block, src):
    key_tiles, nb = _ring_block_tiles(block, tile)
    t = key_tiles.shape[1]

    def body(st, xs):
      i, key_tile = xs
      return _online_lse_update(st, q, key_tile, inv_t, i * t, nb), None

    # Scores of this block against q, in block-local columns, folded into the running state; the best
    # column is turned into a global column index src * b + local.
    m, l, best, best_col = state
    local = (m, l, best, jnp.zeros_like(best_col))
    m, l, best_new, col_new = lax.scan(body, local, (jnp.arange(key_tiles.shape[0]), key_tiles))[0]
    best_col = jnp.where(best_new > best, (src * nb + col_new).astype(jnp.int32), best_col)
    return (m, l, jnp.maximum(best, best_new), best_col)

  def hop(carry, s):
    state, block = carry
    state = fold(state, block, (me - s) % n)
    block = lax.ppermute(block, axis, _ring_perm(n))
    return (state, block), None

  state, block = lax.scan(hop, (_online_lse_init(q), k_local), jnp.arange(n - 1))[0]
  m, l, _, best_col = fold(state, block, (me - (n - 1)) % n)
  lse = m + jnp.log(l)
  pos_raw = jnp.sum(q * k_local, axis=1)
  loss = jnp.sum(lse - pos_raw * inv_t)
  correct = jnp.sum(best_col == me * b + jnp.arange(b)).astype(jnp.float32)
  return (loss, correct), (q, k_local, inv_t, lse)


def _rows_ring_bwd(axis, n, tile, res, cotangents):
  q, k_local, inv_t, lse = res
  g = cotangents[0]

  def hop(carry, _):
    dq, dinv, block, dblock = carry
    key_tiles, nb = _ring_block_tiles(block, tile)
    dq, dinv, dk_block = _softmax_grads_over_tiles(q, key_tiles, nb, inv_t, lse, dq, dinv)
    dblock = dblock + dk_block
    # The block and its gradient accumulator travel together; after n hops both are home again.
    block, dblock = lax.ppermute((block, dblock), axis, _ring_perm(n))
    return (dq, dinv, block, dblock), None

  init = (jnp.zeros_like(q), jnp.zeros_like(q, shape=()), k_local,
          jnp.zeros_like(k_local))
  dq, dinv, _, dk = lax.scan(hop, init, None, length=n)[0]
  dq = dq - k_local
  dk = dk - q
  dinv = dinv - jnp.sum(q * k_local)
  scale = g * inv_t
  return dq * scale, dk * scale, (dinv * g).astype(jnp.result_type(inv_t))


_rows_ring.defvjp(_rows_ring_fwd, _rows_ring_bwd)


# ----------------------------------------------------------------------------------------------------
# The loss the train step calls.
# ----------------------------------------------------------------------------------------------------
def enabled_pairs(pairs: Mapping[str, float]) -> dict[str, tuple[str, str, float]]:
  """{"a_b": weight} -> {"a_b": (a, b, weight)} for weight > 0; errors name the bad pair."""
  out = {}
  for name, weight in dict(pairs).items():
    parts = name.split("_")
    if len(parts) != 2 or not all(parts):
      raise ValueError(f"loss.pairs: pair name {name!r} must be 'a_b' with a, b in {EMBEDDING_KEYS}")
    if not (isinstance(weight, (int, float)) and np.isfinite(weight) and weight >= 0):
      raise ValueError(f"loss.pairs.{name}={weight!r} is out of range: must be a finite weight >= 0")
    if weight > 0:
      out[name] = (parts[0], parts[1], float(weight))
  if not out:
    raise ValueError(f"loss.pairs: no pair has a weight > 0 ({dict(pairs)})")
  return out


def _pair_sums(za, zb, inv_t, *, impl, tile, axis, n, gathered):
  """Sum of a->b and b->a row losses and #correct for this device's rows (inside shard_map if n)."""
  if impl == "ring" and axis is not None:
    loss_ab, corr_ab = _rows_ring(za, zb, inv_t, axis, n, tile)
    loss_ba, corr_ba = _rows_ring(zb, za, inv_t, axis, n, tile)
    return loss_ab + loss_ba, corr_ab + corr_ba
  offset = 0 if axis is None else lax.axis_index(axis) * za.shape[0]
  za_all, zb_all = gathered(za), gathered(zb)
  if impl == "plain":
    rows = _rows_plain
  else:  # "tiled", and "ring" on a single device (there is no ring to pass blocks around).
    rows = functools.partial(_rows_tiled, tile=tile)
  loss_ab, corr_ab = rows(za, zb_all, inv_t, offset)
  loss_ba, corr_ba = rows(zb, za_all, inv_t, offset)
  return loss_ab + loss_ba, corr_ab + corr_ba


def contrastive_loss(embeddings: Mapping[str, jax.Array], pairs: Mapping[str, float], temperature, *,
                     mesh=None, axis: str = "data", impl: str = "plain",
                     tile_size: int = 1024) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of symmetric InfoNCE over the enabled pairs, negatives from the global batch.

  Args:
    embeddings: {"logmel" | "logmel2" | "wave" | "video": f32[B, d]} (global view; under jit the batch
      axis is typically sharded over `axis`).
    pairs: {"a_b": weight} (`config.loss.pairs`); pairs with weight 0 are not computed.
    temperature: scalar (float or traced; learned temperatures get their gradient).
    mesh: a jax Mesh with axis `axis`, or None for the single-device global-view computation.
    impl: "plain", "tiled" or "ring" (see the module docstring).
    tile_size: columns per tile for "tiled"/"ring".
  Returns:
    (total, metrics): total = sum_pair weight * loss_pair; metrics {"loss/a_b", "top1/a_b"} scalars.
  """
  if impl not in IMPLS:
    raise ValueError(f"loss.impl={impl!r} is out of range: must be one of {IMPLS}")
  if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) or tile_size < 1:
    raise ValueError(f"loss.tile_size={tile_size!r} is out of range: must be a positive integer")
  enabled = enabled_pairs(pairs)
  names = sorted({k for a, b, _ in enabled.values() for k in (a, b)})
  for pair, (a, b, _) in enabled.items():
    for k in (a, b):
      if k not in embeddings:
        raise ValueError(f"loss.pairs.{pair} needs embeddings[{k!r}]; have {sorted(embeddings)}")
  shapes = {k: tuple(embeddings[k].shape) for k in names}
  if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
    raise ValueError(f"embeddings must all be [batch, dim] of one shape, got {shapes}")
  global_b = shapes[names[0]][0]
  # At least float32 (bfloat16 embeddings are upcast; float64 stays for gradient checks).
  dtype = jnp.promote_types(embeddings[names[0]].dtype, jnp.float32)
  z = {k: embeddings[k].astype(dtype) for k in names}
  inv_t = 1.0 / jnp.asarray(temperature, dtype)

  def per_device(z, inv_t, axis, n):
    cache = {}

    def gathered(x):
      if axis is None:
        return x
      if id(x) not in cache:
        cache[id(x)] = lax.all_gather(x, axis, tiled=True)
      return cache[id(x)]

    sums = {}
    for pair, (a, b, _) in enabled.items():
      sums[pair] = _pair_sums(z[a], z[b], inv_t, impl=impl, tile=int(tile_size), axis=axis, n=n,
                              gathered=gathered)
    if axis is not None:
      sums = lax.psum(sums, axis)
    return sums

  if mesh is None:
    sums = per_device(z, inv_t, None, 1)
  else:
    if axis not in mesh.axis_names:
      raise ValueError(f"mesh has axes {mesh.axis_names}, no {axis!r}")
    n = mesh.shape[axis]
    if global_b % n:
      raise ValueError(f"global batch {global_b} is not divisible by the {n} devices of mesh axis "
                       f"{axis!r}")

    def body(z, inv_t):
      # inv_t is replicated; marking it device-varying makes its gradient the psum of the devices'.
      return per_device(z, lax.pcast(inv_t, axis, to="varying"), axis, n)

    sums = jax.shard_map(body, mesh=mesh, in_specs=({k: P(axis) for k in names}, P()),
                         out_specs=P(), check_vma=True)(z, inv_t)

  total = jnp.zeros((), dtype)
  metrics = {}
  for pair, (_, _, weight) in enabled.items():
    loss_sum, correct = sums[pair]
    loss = loss_sum / (2 * global_b)
    metrics[f"loss/{pair}"] = loss
    metrics[f"top1/{pair}"] = lax.stop_gradient(correct) / (2 * global_b)
    total = total + weight * loss
  return total, metrics
