"""The AVModel a run's whole config describes, at its initial weights: what training starts from and what
a checkpoint is restored into (so `checkpoints` needs no `train`)."""
from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from avcl.models.model import AVModel, build_model


def keys(seed: int) -> tuple[jax.Array, jax.Array]:
  """(init key, train key) from the one seed."""
  init_key, train_key = jax.random.split(jax.random.key(seed))
  return init_key, train_key


def build(config: ml_collections.ConfigDict, bn_groups: int) -> AVModel:
  """The config's AVModel with the initial weights of a run of `config` (config.seed's init key)."""
  init_key, _ = keys(config.seed)
  return build_model(config.model, config.audio, rngs=nnx.Rngs(init_key), bn_groups=bn_groups)


def abstract_model(config: ml_collections.ConfigDict, bn_groups: int = 1) -> tuple[nnx.GraphDef, dict]:
  """(graphdef, pure dict of jax.ShapeDtypeStruct) of the config's AVModel, without computing anything."""
  model = nnx.eval_shape(lambda: build(config, bn_groups))
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)
