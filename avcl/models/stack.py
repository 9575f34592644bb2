"""Running a stack of residual/conv blocks, optionally rematerialised (config `model.remat`,
`model.remat_every`)."""
from collections.abc import Sequence

import jax
from flax import nnx


def run_blocks(blocks: Sequence[nnx.Module], x: jax.Array, *, remat: int, **kwargs) -> jax.Array:
  """x -> blocks[-1](...blocks[0](x, **kwargs)...), trading compute for memory when `remat` > 0.

  remat (the encoders' `remat`, from the config: 0 when `model.remat` is off, else `model.remat_every`):
    0: every activation the backward pass needs is kept.
    1: only each block's input is kept; each block's activations are recomputed in the backward pass
       (one more forward pass of the blocks, ~1.3x the step's compute).
    k > 1: only the input of every k-th block is kept. Each group of k consecutive blocks is recomputed
       from its input, itself block by block (nested), so that the recomputation holds the group's block
       inputs, not every activation. Saved activations shrink ~k-fold across groups for a second extra
       forward pass of the blocks. Values and gradients are the same as with 0 (tests/test_models.py).
  """
  if not remat:
    for block in blocks:
      x = block(x, **kwargs)
    return x

  def one(block, y):
    return block(y, **kwargs)

  one = nnx.remat(one)
  if remat == 1:
    for block in blocks:
      x = one(block, x)
    return x

  def group(members, y):
    for block in members:
      y = one(block, y)
    return y

  group = nnx.remat(group)
  for i in range(0, len(blocks), remat):
    x = group(list(blocks[i:i + remat]), x)
  return x
