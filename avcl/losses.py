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
- "tiled": all_gather, then walk the gathered keys in [tile, tile] score tiles (rows and columns) with
  an online log-sum-exp; a custom VJP recomputes each tile in the backward pass from the saved per-row
  log-sum-exp (as flash attention / Inf-CL do). Memory O(tile^2 + B d): no [b, B] block ever exists.
- "ring": no all_gather; the other side's blocks travel around the ring with `lax.ppermute` (n - 1
  hops). Same online log-sum-exp and recomputing VJP. Memory O(tile^2 + b d).

Backward of "tiled" / "ring": s_ij enters two row losses, a->b row i and b->a row j, so
dL/ds_ij = p_row_ij + p_col_ij (the two softmaxes). Each device forms only its own rows' gradient, for
za from its za rows against all zb (with every zb's b->a log-sum-exp, which travels / is gathered with
the block: [b] floats), and likewise for zb; no gradient for another device's rows is ever formed or
sent. The two directions run one after the other, so one travelling (or gathered) copy of the keys
exists at a time. Per device at global batch B = n b, dim d, float32 (the `benchmarks.contrastive_memory`
figure): the embeddings 2 b d and their gradients 2 b d, plus for "ring" the travelling block and the
block being received (2 b d, or b d with loss.transit_dtype "bfloat16"), for "tiled" the gathered keys
(B d; half in bfloat16) and what XLA keeps next to them, and [tile, tile] score tiles.
"""
import functools
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from avcl import config_check

IMPLS = ("plain", "tiled", "ring")
TRANSIT_DTYPES = ("float32", "bfloat16")


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


def _tiles(x, tile):
  """x [N, ...] -> ([n_tiles, tile', ...] zero-padded, N) with tile' = min(tile, N)."""
  n = x.shape[0]
  tile = min(tile, n)
  n_tiles = -(-n // tile)
  if n_tiles * tile != n:
    x = jnp.pad(x, ((0, n_tiles * tile - n),) + ((0, 0),) * (x.ndim - 1))
  return x.reshape(n_tiles, tile, *x.shape[1:]), n


def _compute_dtype(transit):
  """loss.transit_dtype -> the dtype embeddings are rounded to for the scores (None: not rounded)."""
  return None if transit == "float32" else jnp.dtype(transit)


def _cast(x, cdt):
  return x if cdt is None else x.astype(cdt)


def _keys(x, cdt):
  """The keys as they are gathered / travel: x itself, or its bfloat16 rounding held as its bits.

  As bits (uint16), XLA:CPU neither runs the collectives in float32 (a converted copy on each side of
  them) nor hoists the upcast of a whole block out of the tile loops (a [b, d] float32 copy); the bits
  are turned back into numbers one tile at a time (`_unpack`), exactly.
  """
  return x if cdt is None else lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16)


def _unpack(k, dtype):
  """A tile of `_keys` -> its values in dtype (bfloat16 bits are the upper half of a float32)."""
  if k.dtype == jnp.uint16:
    k = lax.bitcast_convert_type(k.astype(jnp.uint32) << 16, jnp.float32)
  return k.astype(dtype)


def _scores(q, k, acc_dtype):
  """q [r, d] . k [c, d]^T -> raw scores [r, c] in acc_dtype.

  q [r, d] may be bfloat16-rounded values, k a tile of `_keys`; both are upcast here, one tile at a time:
  products of bfloat16 values are exact in float32, so this is a bfloat16 matmul with float32
  accumulation.
  """
  return lax.dot_general(q.astype(acc_dtype), _unpack(k, acc_dtype), (((1,), (1,)), ((), ())))


def _fold_block(state, q_tiles, k_tiles, nk, inv_t, col_base, cdt):
  """Folds the scores of this device's rows against one block of keys into the online log-sum-exp.

  state: (running max, running sum of exp, best score, best global column), each [nr, tr];
  q_tiles [nr, tr, d]: the rows, zero-padded (padding rows are dropped by the caller); k_tiles
  [nc, tc, d]: nk real keys (the rest padding, masked out), already in the compute dtype; col_base: the
  global column of the block's first key. Only one [tr, tc] score tile exists at a time.
  """
  tc = k_tiles.shape[1]
  acc = q_tiles.dtype

  def row(_, xs):
    q_r, st = xs
    q_r = _cast(q_r, cdt)

    def col(st, ys):
      j, k_t = ys
      m, l, best, best_col = st
      cols = j * tc + jnp.arange(tc)
      s = jnp.where(cols[None, :] < nk, _scores(q_r, k_t, acc) * inv_t, -jnp.inf)  # [tr, tc]
      m_new = jnp.maximum(m, jnp.max(s, axis=1))
      l = l * jnp.exp(m - m_new) + jnp.sum(jnp.exp(s - m_new[:, None]), axis=1)
      tile_best = jnp.max(s, axis=1)
      tile_col = (col_base + cols[jnp.argmax(s, axis=1)]).astype(jnp.int32)
      better = tile_best > best  # Strict: the first maximal column visited wins, as in argmax.
      return (m_new, l, jnp.where(better, tile_best, best), jnp.where(better, tile_col, best_col)), None

    return None, lax.scan(col, st, (jnp.arange(k_tiles.shape[0]), k_tiles))[0]

  return lax.scan(row, None, (q_tiles, state))[1]


def _grad_block(dq, dinv, q_tiles, nq, lse_q, g, k_tiles, nk, lse_k, g_k, inv_t, cdt):
  """Adds one block of keys' part of dL/dq (this device's rows) and of dL/dinv_t.

  A score s_ij = inv_t q_i.k_j enters two row losses: row i of this direction (softmax over j, with
  this device's cotangent g) and row j of the other direction (softmax over i, with the cotangent g_k
  of the device that owns key j). So dL/ds_ij = g p_row_ij + g_k[j] p_col_ij, and with the other
  direction's log-sum-exp of every key at hand no gradient for the keys has to be formed here: each
  device forms only its own rows' gradient, once per direction.

  dq [nr * tr, d]: accumulator, updated in place one row tile at a time; q_tiles [nr, tr, d] (nq real
  rows); lse_q [nr, tr]: the rows' log-sum-exp; k_tiles [nc, tc, d] (nk real keys, compute dtype);
  lse_k, g_k [nc, tc]. dinv gets only this direction's own rows' part (the other direction's comes from
  the device computing those rows), so the devices' dinv sum to the full derivative.
  """
  tr, tc = q_tiles.shape[1], k_tiles.shape[1]
  acc = q_tiles.dtype

  def row(carry, xs):
    dq, dinv = carry
    r, q_r, lse_r = xs
    rows_ok = r * tr + jnp.arange(tr) < nq
    q_r = _cast(q_r, cdt)

    def col(c, ys):
      dq_r, dinv = c
      j, k_t, lse_c, g_c = ys
      raw = _scores(q_r, k_t, acc)  # [tr, tc]
      ok = rows_ok[:, None] & (j * tc + jnp.arange(tc) < nk)[None, :]
      s = raw * inv_t
      p_row = jnp.where(ok, jnp.exp(s - lse_r[:, None]), 0.0)
      p_col = jnp.where(ok, jnp.exp(s - lse_c[None, :]), 0.0)
      ds = (g * p_row + g_c[None, :] * p_col) * inv_t
      return (dq_r + ds @ _unpack(k_t, acc), dinv + g * jnp.sum(p_row * raw)), None

    dq_r = lax.dynamic_slice_in_dim(dq, r * tr, tr)
    (dq_r, dinv), _ = lax.scan(col, (dq_r, dinv), (jnp.arange(k_tiles.shape[0]), k_tiles, lse_k, g_k))
    return (lax.dynamic_update_slice_in_dim(dq, dq_r, r * tr, axis=0), dinv), None

  return lax.scan(row, (dq, dinv), (jnp.arange(q_tiles.shape[0]), q_tiles, lse_q))[0]


def _after(x, dep):
  """x, as a value XLA can form only once the scalar `dep` exists (x itself for finite dep).

  The travelling (or gathered) copy of the keys is formed from the embeddings, which exist from the
  start; XLA:CPU schedules such copies early (it drops optimization barriers before scheduling), so
  the four directions' copies (forward and backward) would all be live at once. Making each depend on
  the previous direction's result keeps one alive at a time.
  """
  return x if dep is None else x + (0 * dep).astype(x.dtype)


def _ring_perm(n):
  return [(j, (j + 1) % n) for j in range(n)]


def _ppermute(x, axis, n):
  """One hop around the ring (device j -> j + 1 mod n), of an array or a tuple of arrays."""
  return lax.ppermute(x, axis, _ring_perm(n))


def _side_fwd(q, k, inv_t, mode, axis, n, tile, cdt, me, dep):
  """Log-sum-exp [b] of q's rows over all B keys, and #rows whose best key is their positive.

  mode "local": k is all the keys; "gather": all_gather k (in the compute dtype); "ring": k's blocks
  travel around the ring (n - 1 ppermute hops; at hop s this device holds device (me - s) mod n's).
  """
  q_tiles, nq = _tiles(q, tile)
  zero = jnp.zeros_like(q_tiles[:, :, 0])  # [nr, tr], device-varying like q inside shard_map.
  state = (zero - jnp.inf, zero, zero - jnp.inf, zero.astype(jnp.int32))
  block = _keys(_after(k, dep), cdt)
  if mode == "ring":
    k_tiles, nk = _tiles(block, tile)

    def hop(carry, s):
      state, k_tiles = carry
      state = _fold_block(state, q_tiles, k_tiles, nk, inv_t, ((me - s) % n) * nk, cdt)
      return (state, _ppermute(k_tiles, axis, n)), None

    state, k_tiles = lax.scan(hop, (state, k_tiles), jnp.arange(n - 1))[0]
    state = _fold_block(state, q_tiles, k_tiles, nk, inv_t, ((me - (n - 1)) % n) * nk, cdt)
  else:
    if mode == "gather":
      block = lax.all_gather(block, axis, tiled=True)
    k_tiles, nk = _tiles(block, tile)
    state = _fold_block(state, q_tiles, k_tiles, nk, inv_t, 0, cdt)
  m, l, _, best_col = (x.reshape(-1)[:nq] for x in state)
  correct = jnp.sum(best_col == me * nq + jnp.arange(nq)).astype(jnp.float32)
  return m + jnp.log(l), correct


def _side_bwd(q, k, lse_q, lse_k, g, inv_t, mode, axis, n, tile, cdt, dep):
  """dL/dq [b, d] and this device's part of dL/dinv_t for q's direction (see `_grad_block`).

  In "ring" mode each key block travels with its log-sum-exp [b] and its owner's cotangent (a scalar):
  n - 1 hops, and no gradient accumulator travels.
  """
  acc = q.dtype
  q_tiles, nq = _tiles(q, tile)
  nr, tr = q_tiles.shape[:2]
  lse_q = _tiles(lse_q, tile)[0]
  k_c = _keys(_after(k, dep), cdt)  # Formed only when needed; also the first travelling block.
  # The positive score s_ii enters this device's loss twice (as an a->b and as a b->a row); its
  # gradient starts the accumulator, so that the result needs no second [b, d] buffer.
  dq = -2 * g * inv_t * _unpack(k_c, acc)
  if nr * tr != nq:
    dq = jnp.pad(dq, ((0, nr * tr - nq), (0, 0)))
  dinv = jnp.zeros_like(q, shape=())  # Device-varying like q inside shard_map.
  if mode == "ring":
    k_tiles, nk = _tiles(k_c, tile)
    lse_k = _tiles(lse_k, tile)[0]

    def block(dq, dinv, k_tiles, lse_k, g_k):
      return _grad_block(dq, dinv, q_tiles, nq, lse_q, g, k_tiles, nk, lse_k,
                         jnp.broadcast_to(g_k, lse_k.shape), inv_t, cdt)

    def hop(carry, _):
      dq, dinv, travel = carry
      dq, dinv = block(dq, dinv, *travel)
      return (dq, dinv, _ppermute(travel, axis, n)), None

    dq, dinv, travel = lax.scan(hop, (dq, dinv, (k_tiles, lse_k, g)), None, length=n - 1)[0]
    dq, dinv = block(dq, dinv, *travel)
  else:
    g_k = jnp.broadcast_to(g, lse_k.shape)
    if mode == "gather":
      k_c = lax.all_gather(k_c, axis, tiled=True)
      lse_k = lax.all_gather(lse_k, axis, tiled=True)
      g_k = lax.all_gather(g_k, axis, tiled=True)
    k_tiles, nk = _tiles(k_c, tile)
    dq, dinv = _grad_block(dq, dinv, q_tiles, nq, lse_q, g, k_tiles, nk, _tiles(lse_k, tile)[0],
                           _tiles(g_k, tile)[0], inv_t, cdt)
  return dq[:nq], dinv


def _positive_scores(za, zb, tile, cdt):
  """Raw positive scores za_i . zb_i [b], as the score tiles compute them, one row tile at a time
  (as one expression XLA:CPU materialises the [b, d] product before summing it)."""
  a_tiles, nq = _tiles(za, tile)
  b_tiles, _ = _tiles(zb, tile)
  up = lambda x: _cast(x, cdt).astype(za.dtype)
  return lax.map(lambda ab: jnp.sum(up(ab[0]) * up(ab[1]), axis=1), (a_tiles, b_tiles)).reshape(-1)[:nq]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7))
def _pair_rows(za, zb, inv_t, mode, axis, n, tile, transit):
  """(sum of this device's a->b and b->a row losses, #correct rows) without the [b, B] score block.

  za, zb [b, d]: this device's rows (inside shard_map over `axis` of size n unless mode is "local");
  mode "local" | "gather" | "ring" (see `_side_fwd`); tile: rows and columns per score tile;
  transit: "float32", or "bfloat16" to compute every score from bfloat16-rounded embeddings (f32
  accumulation; blocks travel / are gathered in bfloat16; gradients pass straight through the rounding).
  """
  return _pair_rows_fwd(za, zb, inv_t, mode, axis, n, tile, transit)[0]


def _pair_rows_fwd(za, zb, inv_t, mode, axis, n, tile, transit):
  cdt = _compute_dtype(transit)
  me = 0 if mode == "local" else lax.axis_index(axis)
  lse_a, corr_a = _side_fwd(za, zb, inv_t, mode, axis, n, tile, cdt, me, None)
  lse_b, corr_b = _side_fwd(zb, za, inv_t, mode, axis, n, tile, cdt, me, lse_a[0])
  pos_raw = _positive_scores(za, zb, tile, cdt)
  loss = jnp.sum(lse_a - pos_raw * inv_t) + jnp.sum(lse_b - pos_raw * inv_t)  # Row by row, as plain.
  # The positive scores' sum is kept for dL/dinv_t rather than recomputed in the backward pass (another
  # pass over both [b, d] inputs).
  return (loss, corr_a + corr_b), (za, zb, inv_t, lse_a, lse_b, jnp.sum(pos_raw))


def _pair_rows_bwd(mode, axis, n, tile, transit, res, cotangents):
  za, zb, inv_t, lse_a, lse_b, pos_sum = res
  g = cotangents[0]  # The accuracy output is not differentiable.
  cdt = _compute_dtype(transit)
  dza, dinv_a = _side_bwd(za, zb, lse_a, lse_b, g, inv_t, mode, axis, n, tile, cdt, lse_b[0])
  dzb, dinv_b = _side_bwd(zb, za, lse_b, lse_a, g, inv_t, mode, axis, n, tile, cdt, dza[0, 0])
  dinv = dinv_a + dinv_b - 2 * g * pos_sum
  return dza, dzb, dinv.astype(jnp.result_type(inv_t))


_pair_rows.defvjp(_pair_rows_fwd, _pair_rows_bwd)


# ----------------------------------------------------------------------------------------------------
# The loss the train step calls.
# ----------------------------------------------------------------------------------------------------
def split_pair(name: str) -> tuple[str, str] | None:
  """The two embeddings a pair "a_b" compares, or None when `name` is not two different names: the one
  parser of `loss.pairs` names."""
  parts = name.split("_")
  if len(parts) != 2 or not all(parts) or parts[0] == parts[1]:
    return None
  return parts[0], parts[1]


def _weight_ok(weight) -> bool:
  return config_check.is_real(weight) and math.isfinite(weight) and weight >= 0


def enabled_pairs(pairs: Mapping[str, float]) -> dict[str, tuple[str, str, float]]:
  """{"a_b": weight} -> {"a_b": (a, b, weight)} for weight > 0; errors name the bad pair."""
  out = {}
  for name, weight in dict(pairs).items():
    parts = split_pair(name)
    if parts is None:
      raise ValueError(f"loss.pairs: pair name {name!r} must be 'a_b' with a != b, two embedding names")
    if not _weight_ok(weight):
      raise ValueError(f"loss.pairs.{name}={weight!r} is out of range: must be a finite weight >= 0")
    if weight > 0:
      out[name] = (*parts, float(weight))
  if not out:
    raise ValueError(f"loss.pairs: no pair has a weight > 0 ({dict(pairs)})")
  return out


def pair_inputs(pairs: Mapping[str, float]) -> set[str]:
  """The embeddings the enabled pairs compare (the model inputs a step must compute)."""
  return {k for a, b, _ in enabled_pairs(pairs).values() for k in (a, b)}


def check_config(c: config_check.Checker, input_encoder: Mapping[str, str],
                 present: Mapping[str, bool | None]) -> None:
  """The `loss.*` fields (`c` on config.loss).

  input_encoder: embedding name -> the model slot that computes it (avcl.models.model.INPUT_ENCODER);
  present: {slot: whether config.model names an encoder there, None when the name is unknown (already
  reported)}, as avcl.models.model.check_config returns it.
  """
  pairs = c.check("pairs", lambda v: hasattr(v, "items"), "be a mapping {'a_b': weight}")
  if hasattr(pairs, "items"):
    active = 0
    for key, weight in pairs.items():
      path = f"pairs.{key}"
      parts = split_pair(key)
      if parts is None or any(p not in input_encoder for p in parts):
        c.error(f"{c.label(path)}: pair names must be 'a_b' with a != b among {', '.join(input_encoder)}")
        continue
      if not _weight_ok(weight):
        c.fail(path, weight, "be a finite number >= 0 (0 disables the pair)")
        continue
      if weight > 0:
        active += 1
        for slot in (input_encoder[p] for p in parts):
          if present.get(slot) is False:
            c.fail(path, weight, f"be 0 because model.{slot}.name is not set (the pair needs the {slot} encoder)")
    if active == 0:
      c.error(f"{c.label('pairs')}: at least one pair must have a weight > 0")
  c.real("temperature", 0, lo_open=True)
  c.boolean("learn_temperature")
  impl = c.choice("impl", IMPLS)
  c.integer("tile_size", 1)
  transit = c.choice("transit_dtype", TRANSIT_DTYPES)
  if transit == "bfloat16" and impl == "plain":
    c.fail("transit_dtype", transit, "be 'float32' when loss.impl is 'plain' (bfloat16 is for 'tiled'/'ring')")


def _pair_sums(za, zb, inv_t, *, impl, tile, axis, n, gathered, transit):
  """Sum of a->b and b->a row losses and #correct for this device's rows (inside shard_map if n)."""
  if impl == "plain":
    offset = 0 if axis is None else lax.axis_index(axis) * za.shape[0]
    loss_ab, corr_ab = _rows_plain(za, gathered(zb), inv_t, offset)
    loss_ba, corr_ba = _rows_plain(zb, gathered(za), inv_t, offset)
    return loss_ab + loss_ba, corr_ab + corr_ba
  # "ring" on a single device is the tiled loss: there is no ring to pass blocks around.
  mode = "local" if axis is None else ("ring" if impl == "ring" else "gather")
  return _pair_rows(za, zb, inv_t, mode, axis, n, tile, transit)


def contrastive_loss(embeddings: Mapping[str, jax.Array], pairs: Mapping[str, float], temperature, *,
                     mesh=None, axis: str = "data", impl: str = "plain",
                     tile_size: int = 1024, transit_dtype: str = "float32"
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of symmetric InfoNCE over the enabled pairs, negatives from the global batch.

  Args:
    embeddings: {"logmel" | "logmel2" | "wave" | "video": f32[B, d]} (global view; under jit the batch
      axis is typically sharded over `axis`).
    pairs: {"a_b": weight} (`config.loss.pairs`); pairs with weight 0 are not computed.
    temperature: scalar (float or traced; learned temperatures get their gradient).
    mesh: a jax Mesh with axis `axis`, or None for the single-device global-view computation.
    impl: "plain", "tiled" or "ring" (see the module docstring).
    tile_size: rows and columns per score tile for "tiled"/"ring" (scores exist [tile, tile] at a time).
    transit_dtype: "float32", or "bfloat16" ("tiled"/"ring" only): the scores are computed from
      bfloat16-rounded embeddings with float32 accumulation, so blocks are gathered / sent around the
      ring in bfloat16 (half the memory and traffic); gradients pass straight through the rounding.
  Returns:
    (total, metrics): total = sum_pair weight * loss_pair; metrics {"loss/a_b", "top1/a_b"} scalars.
  """
  if impl not in IMPLS:
    raise ValueError(f"loss.impl={impl!r} is out of range: must be one of {IMPLS}")
  if isinstance(tile_size, bool) or not isinstance(tile_size, (int, np.integer)) or tile_size < 1:
    raise ValueError(f"loss.tile_size={tile_size!r} is out of range: must be a positive integer")
  if transit_dtype not in TRANSIT_DTYPES:
    raise ValueError(f"loss.transit_dtype={transit_dtype!r} is out of range: must be one of "
                     f"{TRANSIT_DTYPES}")
  if transit_dtype != "float32" and impl == "plain":
    raise ValueError(f"loss.transit_dtype={transit_dtype!r} needs loss.impl 'tiled' or 'ring' (the plain "
                     "loss differentiates through its all_gather, whose transpose would round gradients)")
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
                              gathered=gathered, transit=transit_dtype)
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
