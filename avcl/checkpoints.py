"""Checkpoint layout, the run's config file, and restoring a trained model for evaluation.

Layout (docs/design.md):
  WORKDIR/config.json             the run's config (written by process 0 before the first step)
  WORKDIR/checkpoints/<step>/     orbax CheckpointManager, one item "state" =
                                  {"model": nnx state as a pure dict, "opt_state": optax state, "step": int32}

Every process calls `save` (orbax's multi-host path: each process writes the shards it owns, process 0
commits); file operations go through etils.epath so WORKDIR may be a gs:// path.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
STATE_ITEM = "state"


class CheckpointError(RuntimeError):
  """A workdir or checkpoint is missing, unreadable, or does not match the config's architecture."""


# Config file ---------------------------------------------------------------------------------------------
def write_config(workdir: str | epath.Path, config: ml_collections.ConfigDict) -> None:
  """Writes WORKDIR/config.json (call from process 0 only)."""
  path = epath.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")


def _tuples(x: Any) -> Any:
  """JSON lists back to the tuples configs use (e.g. model.video.blocks)."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def load_config(workdir: str | epath.Path) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise CheckpointError(f"{path} not found: {workdir} is not a training workdir (no config.json)")
  return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))


# Manager -------------------------------------------------------------------------------------------------
def absolute(workdir: str | epath.Path) -> epath.Path:
  """`workdir` as an absolute path: orbax refuses relative ones (remote URLs such as gs:// pass through)."""
  text = os.fspath(workdir)
  return epath.Path(text if "://" in text else os.path.abspath(text))


def make_manager(workdir: str | epath.Path, *, keep: int | None = None, read_only: bool = False
                 ) -> ocp.CheckpointManager:
  """Orbax manager of WORKDIR/checkpoints keeping the `keep` newest steps (async saves)."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only, read_only=read_only,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(absolute(workdir) / CHECKPOINT_DIR,
                               item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler()}, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: dict) -> None:
  """Starts an async save of `state` as checkpoint `step` (every process must call this)."""
  manager.save(step, args=ocp.args.Composite(**{STATE_ITEM: ocp.args.PyTreeSave(state)}), force=True)


def agreed_latest_step(manager: ocp.CheckpointManager) -> int | None:
  """The newest finished checkpoint step, the same on every process (process 0's view wins)."""
  step = manager.latest_step()
  if jax.process_count() > 1:
    step = int(multihost_utils.broadcast_one_to_all(np.int64(-1 if step is None else step)))
    step = None if step < 0 else step
  return step


def _restore_args(abstract: Any) -> Any:
  return jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                                      dtype=x.dtype), abstract)


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any, *, partial: bool = False) -> Any:
  """Restores checkpoint `step` into the structure, shapes and shardings of `abstract_state`
  (a pytree of jax.ShapeDtypeStruct with .sharding); with partial=True only the subtrees it names."""
  check_shapes(manager, step, abstract_state)
  args = ocp.args.PyTreeRestore(item=abstract_state, restore_args=_restore_args(abstract_state),
                                partial_restore=partial)
  return manager.restore(step, args=ocp.args.Composite(**{STATE_ITEM: args}))[STATE_ITEM]


def _flat_shapes(tree: Any) -> dict[str, tuple]:
  """{"model/encoder/kernel": shape} with every key as a string (orbax stores list indices as '0')."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    parts = []
    for p in path:
      for attr in ("key", "name", "idx"):
        if hasattr(p, attr):
          parts.append(str(getattr(p, attr)))
          break
    out["/".join(parts)] = tuple(leaf.shape)
  return out


def check_shapes(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> None:
  """Raises CheckpointError naming every parameter whose stored shape differs from `abstract_state`'s,
  and every parameter the config expects that the checkpoint lacks."""
  metadata = manager.item_metadata(step)[STATE_ITEM]
  if metadata is None:
    raise CheckpointError(f"checkpoint step {step} in {manager.directory} has no readable '{STATE_ITEM}' item")
  stored = _flat_shapes(metadata.tree if hasattr(metadata, "tree") else metadata)
  wanted = _flat_shapes(abstract_state)
  problems = []
  for path, shape in wanted.items():
    if path not in stored:
      problems.append(f"{path}: expected by the config with shape {shape}, absent from the checkpoint")
    elif stored[path] != shape:
      problems.append(f"{path}: checkpoint has shape {stored[path]}, the config's architecture needs {shape}")
  if problems:
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    raise CheckpointError(
        f"checkpoint step {step} in {manager.directory} does not match the config's architecture "
        f"(was it trained with a different model config?):\n  " + "\n  ".join(shown))


# Evaluation entry point ----------------------------------------------------------------------------------
def restore_model(workdir: str | epath.Path, step: int | None = None
                  ) -> tuple[Any, ml_collections.ConfigDict, int]:
  """(model, config, step): the AVModel of WORKDIR's checkpoint `step` (default: the newest), its config.

  The model holds the trained parameters and BatchNorm statistics, on the default device; call it with
  train=False. Raises CheckpointError for a missing workdir, config or checkpoint, or for parameter shapes
  that do not match the architecture in WORKDIR/config.json.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from avcl import train as train_lib  # pylint: disable=g-import-not-at-top

  workdir = epath.Path(workdir)
  if not workdir.exists():
    raise CheckpointError(f"workdir {workdir} does not exist")
  config = load_config(workdir)
  ckpt_dir = workdir / CHECKPOINT_DIR
  if not ckpt_dir.exists():
    raise CheckpointError(f"no checkpoints in {workdir}: {ckpt_dir} does not exist (train first)")
  manager = make_manager(workdir, read_only=True)
  steps = manager.all_steps()
  if not steps:
    raise CheckpointError(f"no finished checkpoint in {ckpt_dir}")
  if step is None:
    step = max(steps)
  elif step not in steps:
    raise CheckpointError(f"checkpoint step {step} not in {ckpt_dir}; available steps: {sorted(steps)}")

  graphdef, abstract_model = train_lib.abstract_model(config)
  # This process's own first device: in multi-process runs every process restores a full local copy
  # (jax.devices()[0] would belong to process 0 alone and leave the others with no addressable shard).
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = {"model": jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                                    abstract_model)}
  restored = restore(manager, step, abstract, partial=True)
  manager.close()
  model = nnx.merge(graphdef, restored["model"])
  return model, config, int(step)
