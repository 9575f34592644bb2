"""Running a stack of residual/conv blocks, each optionally rematerialised (config `model.remat`)."""
from collections.abc import Sequence

import jax
from flax import nnx


def run_blocks(blocks: Sequence[nnx.Module], x: jax.Array, *, remat: bool, **kwargs) -> jax.Array:
  """x -> blocks[-1](...blocks[0](x, **kwargs)...). With `remat`, each block's activations are recomputed
  in the backward pass instead of kept, trading compute for memory on large configs."""
  for block in blocks:
    if remat:
      x = nnx.remat(lambda blk, y: blk(y, **kwargs))(block, x)
    else:
      x = block(x, **kwargs)
  return x
