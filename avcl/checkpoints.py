"""Checkpoint layout, the run's config file, and restoring a trained model for evaluation.

Layout (docs/design.md):
  WORKDIR/config.json             the run's config (process 0 writes it atomically: at the first start, and
                                  on a resume that changed it only after the check and the restore)
  WORKDIR/config_changes.jsonl    one JSON line per resume whose config differed from config.json
  WORKDIR/checkpoints/<step>/     orbax CheckpointManager, one item "state" = the train state (avcl.train):
                                  {"params": {"model": nnx.Param state as a pure dict,
                                              "log_inv_temperature": f32[] (when loss.learn_temperature)},
                                   "batch_stats": the model's other nnx state (BatchNorm statistics), pure dict,
                                   "opt_state": optax state over "params", "step": int32}
                                  Older runs wrote {"model": the whole nnx state as one pure dict, "opt_state"
                                  (the same tree), "step"[, "log_inv_temperature"]}: `restore_model` and
                                  `restore_train_state` read both layouts.
  WORKDIR/initial_model.msgpack   the whole model state at step 0 (flax msgpack of the pure dict of
                                  nnx.state(model), parameters and statistics together; process 0 writes it
                                  atomically when a new run starts): evaluation's random-init baseline
  WORKDIR/cpu_seconds.json        {"<step>": CPU-seconds of training process 0 up to that checkpoint}

Every process calls `save` (orbax's multi-host path: each process writes the shards it owns, process 0
commits); file operations go through etils.epath so WORKDIR may be a gs:// path.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx, serialization
from jax.experimental import multihost_utils

from avcl.models import from_config
from data_pipeline import paths

CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"
CONFIG_CHANGES_FILE = "config_changes.jsonl"
INITIAL_MODEL_FILE = "initial_model.msgpack"
CPU_SECONDS_FILE = "cpu_seconds.json"
STATE_ITEM = "state"
# Orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp` (older versions add `-<timestamp>`) and renames
# it when complete; a save killed midway leaves that folder behind (orbax.checkpoint.path.step.TMP_DIR_SUFFIX).
ORBAX_TMP_MARKER = ".orbax-checkpoint-tmp"

# Config fields that may differ between the config.json of a workdir and the config that resumes it, without
# --allow_config_change. They change how long the run goes on and what it logs and keeps, never what a step
# computes. One exception is accepted on purpose: train.num_steps sets the length of the learning-rate
# schedule (optim.make_optimizer), so extending a run stretches the cosine decay from the resumed step on;
# every change is still recorded in config_changes.jsonl, so the stretch can be seen later.
# data.generate_if_missing only matters when the data is absent; eval.* is read by evaluation, never by
# training. data.root is not here: another root is other data (or the same data in another order of shards);
# data moved to another path resumes with --allow_config_change. The model's speed options change how a step
# is computed, not what (the same values and gradients to float32 rounding, tests/test_models.py), and runs
# stored before they existed lack them.
RESUMABLE_FIELDS = ("train.num_steps", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                    "data.generate_if_missing", "eval.*", "model.bn_backward", "model.im2col_max_positions",
                    "model.cpu_conv_library")


def resumable(field: str) -> bool:
  """Whether the dotted config `field` may change on resume without --allow_config_change."""
  return any(field == f or (f.endswith(".*") and field.startswith(f[:-1])) for f in RESUMABLE_FIELDS)


class CheckpointError(RuntimeError):
  """A workdir or checkpoint is missing, unreadable, or does not match the config's architecture."""


# Config file ---------------------------------------------------------------------------------------------
def _write_atomic(path: epath.Path, text: str | bytes) -> None:
  """Replaces `path` by `text` so that a reader (or a crash) sees the old file or the new one, never a part.

  Local files: temporary file in the same folder, fsync, rename, fsync of the folder. Remote paths (gs://):
  an object upload is already all-or-nothing, so a plain write is atomic there.
  """
  text_path = os.fspath(path)
  data = text.encode("utf-8") if isinstance(text, str) else text
  if paths.is_remote(text_path):
    path.write_bytes(data)
    return
  tmp = f"{text_path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, text_path)
  dir_fd = os.open(os.path.dirname(os.path.abspath(text_path)), os.O_RDONLY)
  try:
    os.fsync(dir_fd)  # The rename itself survives a power cut only once the folder is synced.
  finally:
    os.close(dir_fd)


def config_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"


def write_config(workdir: str | epath.Path, config: ml_collections.ConfigDict) -> None:
  """Writes WORKDIR/config.json atomically (call from process 0 only)."""
  path = epath.Path(workdir) / CONFIG_FILE
  path.parent.mkdir(parents=True, exist_ok=True)
  _write_atomic(path, config_json(config))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = v
  return out


def config_diff(stored: dict, current: dict) -> dict[str, tuple[Any, Any]]:
  """{"dotted.field": (stored value, current value)} of every field that differs; a field only one side has
  shows as (value, MISSING) or (MISSING, value). Values are compared as JSON gives them (tuples as lists)."""
  a, b = _flatten(stored), _flatten(json.loads(json.dumps(current)))
  return {k: (a.get(k, "<missing>"), b.get(k, "<missing>")) for k in sorted(set(a) | set(b))
          if a.get(k, "<missing>") != b.get(k, "<missing>")}


class ConfigChangedError(CheckpointError):
  """A resume with a config that differs from WORKDIR/config.json in fields that may not change."""


def check_resume_config(workdir: str | epath.Path, config: ml_collections.ConfigDict, step: int, *,
                        allow_change: bool) -> dict[str, tuple[Any, Any]]:
  """Compares `config` with WORKDIR/config.json before resuming from checkpoint `step` (process 0).

  Returns the diff (empty when nothing changed, or when there is no config.json to compare with: workdirs
  from before this check). Raises ConfigChangedError naming every changed field outside RESUMABLE_FIELDS
  with its old and new value, unless `allow_change`. Writes nothing: once the restore succeeded, the caller
  passes a non-empty diff to `record_config_change`.
  """
  workdir = epath.Path(workdir)
  path = workdir / CONFIG_FILE
  if not path.exists():
    return {}
  try:
    stored = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e}); it should hold the config the run started "
                          "with: restore it, or remove it to resume with the current config unchecked") from e
  diff = config_diff(stored, config.to_dict())
  refused = {k: v for k, v in diff.items() if not resumable(k)}
  if refused and not allow_change:
    lines = [f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items()]
    raise ConfigChangedError(
        f"refusing to resume {workdir} from step {step}: the config differs from its {CONFIG_FILE} in "
        f"{len(refused)} field(s) that change what training computes (stored -> now):\n  " + "\n  ".join(lines)
        + "\nRun with the stored values, use another --workdir, or pass --allow_config_change to continue "
        f"this run with the new values (recorded in {CONFIG_CHANGES_FILE}). Fields free to change on resume: "
        + ", ".join(RESUMABLE_FIELDS) + ".")
  return diff


def record_config_change(workdir: str | epath.Path, config: ml_collections.ConfigDict, step: int,
                         diff: dict[str, tuple[Any, Any]]) -> None:
  """Appends `diff` to WORKDIR/config_changes.jsonl with the step, then replaces config.json by `config`
  (process 0, after the restore). `allowed_by_flag` is true when a field outside RESUMABLE_FIELDS changed."""
  workdir = epath.Path(workdir)
  record = {"step": int(step), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "allowed_by_flag": not all(resumable(k) for k in diff),
            "changes": {k: {"old": old, "new": new} for k, (old, new) in diff.items()}}
  log_path = workdir / CONFIG_CHANGES_FILE
  old_log = log_path.read_text() if log_path.exists() else ""
  # Log first, then config.json: a crash in between leaves the change recorded and the old config, so the
  # next resume finds the same diff and records it again rather than losing it.
  _write_atomic(log_path, old_log + json.dumps(record, sort_keys=True, default=str) + "\n")
  write_config(workdir, config)


def _tuples(x: Any) -> Any:
  """JSON lists back to the tuples configs use (e.g. model.video.blocks)."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


class ConfigNotFoundError(CheckpointError, FileNotFoundError):
  """WORKDIR has no config.json: it is not a training workdir."""


def load_config(workdir: str | epath.Path) -> ml_collections.ConfigDict:
  """The run's config from WORKDIR/config.json (written by training), JSON lists back to tuples; the one
  reader of a stored config. Local or remote (gs://, ram://: through data_pipeline.paths)."""
  path = paths.join(os.fspath(workdir), CONFIG_FILE)
  if not paths.exists(path):
    raise ConfigNotFoundError(f"{path} not found: {workdir!r} is not an avcl training workdir (no config.json)")
  return ml_collections.ConfigDict(_tuples(json.loads(paths.read_text(path))))


# Initial model and CPU-seconds ---------------------------------------------------------------------------
def _local_copy(x: Any) -> np.ndarray:
  """A numpy copy of a replicated array, from this process's own shard (works with several processes)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x)


def write_initial_model(workdir: str | epath.Path, model_state: dict) -> None:
  """Writes WORKDIR/initial_model.msgpack: the replicated model state (pure dict) at step 0 (process 0)."""
  # to_state_dict: string keys throughout (nnx.List entries have int keys, which msgpack would keep as ints).
  state = serialization.to_state_dict(jax.tree.map(_local_copy, model_state))
  _write_atomic(epath.Path(workdir) / INITIAL_MODEL_FILE, serialization.msgpack_serialize(state))


def read_initial_model(workdir: str | epath.Path, target: dict) -> dict | None:
  """The step-0 model state of WORKDIR in the structure of `target` (a pure dict of the config's model, e.g.
  of arrays or ShapeDtypeStructs), or None when the run did not write one. Raises CheckpointError naming the
  entry whose shape differs from `target`'s."""
  path = epath.Path(workdir) / INITIAL_MODEL_FILE
  if not path.exists():
    return None
  stored = serialization.msgpack_restore(path.read_bytes())
  try:
    state = serialization.from_state_dict(target, stored)
  except (ValueError, KeyError) as e:
    raise CheckpointError(f"{path} does not match the config's architecture: {e}") from e
  problems = shape_problems(state, target)
  if problems:
    raise CheckpointError(f"{path} does not match the config's architecture:\n  " + "\n  ".join(problems))
  return state


def read_cpu_seconds(workdir: str | epath.Path) -> dict[int, float]:
  """{step: CPU-seconds} from WORKDIR/cpu_seconds.json ({} when absent: runs from before it was written)."""
  path = epath.Path(workdir) / CPU_SECONDS_FILE
  if not path.exists():
    return {}
  return {int(k): float(v) for k, v in json.loads(path.read_text()).items()}


def write_cpu_seconds(workdir: str | epath.Path, seconds: dict[int, float]) -> None:
  """Replaces WORKDIR/cpu_seconds.json by `seconds` ({step: CPU-seconds}) atomically (process 0)."""
  text = json.dumps({str(k): round(float(v), 3) for k, v in sorted(seconds.items())}, indent=1) + "\n"
  _write_atomic(epath.Path(workdir) / CPU_SECONDS_FILE, text)


# Manager -------------------------------------------------------------------------------------------------
def absolute(workdir: str | epath.Path) -> epath.Path:
  """`workdir` as an absolute path: orbax refuses relative ones (remote URLs such as gs:// pass through)."""
  text = os.fspath(workdir)
  return epath.Path(paths.absolute(text))


def clean_orbax_temporaries(workdir: str | epath.Path) -> list[str]:
  """Removes the temporary folders of saves that were killed midway from WORKDIR/checkpoints; returns them.

  Call on process 0 before any manager lists the steps, while no save is running (at start).
  """
  ckpt_dir = absolute(workdir) / CHECKPOINT_DIR
  if not ckpt_dir.exists():
    return []
  removed = []
  for child in sorted(ckpt_dir.iterdir(), key=lambda p: p.name):
    if ORBAX_TMP_MARKER in child.name:
      if child.is_dir():
        child.rmtree()
      else:
        child.unlink()
      removed.append(child.name)
  return removed


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


def _stored_tree(manager: ocp.CheckpointManager, step: int) -> Any:
  """The tree of checkpoint `step`'s "state" item as stored (metadata leaves with .shape), read from disk."""
  metadata = manager.item_metadata(step)[STATE_ITEM]
  if metadata is None:
    raise CheckpointError(f"checkpoint step {step} in {manager.directory} has no readable '{STATE_ITEM}' item")
  return metadata.tree if hasattr(metadata, "tree") else metadata


def shape_problems(stored: Any, wanted: Any) -> list[str]:
  """One line for every entry of `wanted` (a pytree of arrays or ShapeDtypeStructs: what the config's
  architecture needs) that `stored` lacks or holds with another shape: the one shape check of a restore."""
  have, need = _flat_shapes(stored), _flat_shapes(wanted)
  problems = []
  for path, shape in need.items():
    if path not in have:
      problems.append(f"{path}: expected by the config with shape {shape}, absent from the checkpoint")
    elif have[path] != shape:
      problems.append(f"{path}: checkpoint has shape {have[path]}, the config's architecture needs {shape}")
  return problems


def check_shapes(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> None:
  """Raises CheckpointError naming every parameter whose stored shape differs from `abstract_state`'s,
  and every parameter the config expects that the checkpoint lacks."""
  problems = shape_problems(_stored_tree(manager, step), abstract_state)
  if problems:
    shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
    raise CheckpointError(
        f"checkpoint step {step} in {manager.directory} does not match the config's architecture "
        f"(was it trained with a different model config?):\n  " + "\n  ".join(shown))


# Train-state layouts -------------------------------------------------------------------------------------
def join_model_state(params: dict, batch_stats: dict) -> dict:
  """The whole model's state as one pure dict (that of nnx.state(model)) from its two parts, pure dicts of
  the same nesting with disjoint leaves: the nnx.Param state and the rest (BatchNorm statistics)."""
  out = dict(params)
  for k, v in batch_stats.items():
    out[k] = join_model_state(out[k], v) if isinstance(v, dict) and k in out else v
  return out


def select(tree: dict, template: dict) -> dict:
  """The entries of the nested dict `tree` at the keys of `template` (recursively): the inverse of
  `join_model_state`, select(join_model_state(p, b), p) == p."""
  return {k: select(tree[k], v) if isinstance(v, dict) else tree[k] for k, v in template.items()}


def is_old_layout(manager: ocp.CheckpointManager, step: int) -> bool:
  """Whether checkpoint `step` holds the older train state {"model": whole nnx state, "opt_state", "step"
  [, "log_inv_temperature"]} rather than {"params", "batch_stats", "opt_state", "step"}."""
  tree = _stored_tree(manager, step)
  return "model" in tree and "params" not in tree


def old_layout(state: Any) -> dict:
  """A train state (or its abstract tree) in the older layout, which the same optimizer state fits: the
  optimizer's tree was then {"model": parameters[, "log_inv_temperature"]}, as "params" is now."""
  old = {"model": join_model_state(state["params"]["model"], state["batch_stats"]),
         "opt_state": state["opt_state"], "step": state["step"]}
  if "log_inv_temperature" in state["params"]:
    old["log_inv_temperature"] = state["params"]["log_inv_temperature"]
  return old


def from_old_layout(old: dict, abstract_state: Any) -> dict:
  """The train state of the older-layout `old`, split as `abstract_state` (the current layout) is."""
  params = {"model": select(old["model"], abstract_state["params"]["model"])}
  if "log_inv_temperature" in abstract_state["params"]:
    params["log_inv_temperature"] = old["log_inv_temperature"]
  return {"params": params, "batch_stats": select(old["model"], abstract_state["batch_stats"]),
          "opt_state": old["opt_state"], "step": old["step"]}


def restore_train_state(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> dict:
  """Checkpoint `step` as a train state in the layout, shapes and shardings of `abstract_state`, whichever
  layout it was written in (an older-layout checkpoint is restored as such and converted: nothing is
  computed, the arrays are the same)."""
  if is_old_layout(manager, step):
    return from_old_layout(restore(manager, step, old_layout(abstract_state)), abstract_state)
  return restore(manager, step, abstract_state)


# Evaluation entry point ----------------------------------------------------------------------------------
def restore_model(workdir: str | epath.Path, step: int | None = None
                  ) -> tuple[Any, ml_collections.ConfigDict, int]:
  """(model, config, step): the AVModel of WORKDIR's checkpoint `step` (default: the newest), its config.

  The model holds the trained parameters and BatchNorm statistics, on the default device; call it with
  train=False. Raises CheckpointError for a missing workdir, config or checkpoint, or for parameter shapes
  that do not match the architecture in WORKDIR/config.json.
  """
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

  # The split training uses (avcl.train): parameters and the rest (BatchNorm statistics).
  graphdef, params, batch_stats = nnx.split(nnx.eval_shape(lambda: from_config.build(config, 1)), nnx.Param, ...)
  # This process's own first device: in multi-process runs every process restores a full local copy
  # (jax.devices()[0] would belong to process 0 alone and leave the others with no addressable shard).
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  params, batch_stats = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                                     (nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)))
  # Only the model is read (partial restore): not the optimizer state, step or temperature.
  try:
    if is_old_layout(manager, step):
      whole = restore(manager, step, {"model": join_model_state(params, batch_stats)}, partial=True)["model"]
      params, batch_stats = select(whole, params), select(whole, batch_stats)
    else:
      restored = restore(manager, step, {"params": {"model": params}, "batch_stats": batch_stats}, partial=True)
      params, batch_stats = restored["params"]["model"], restored["batch_stats"]
  finally:
    manager.close()
  return nnx.merge(graphdef, params, batch_stats), config, int(step)
