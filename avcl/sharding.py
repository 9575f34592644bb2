"""Device mesh and the shardings of the training state and the batch.

One mesh axis, "data", spans every device of every process. The batch is split along its leading axis over
"data"; parameters and optimizer state are replicated. Each process reads only its own slice of the global
batch (global_batch_size // process_count clips) and `global_batch_from_local` assembles the global
`jax.Array` from those slices without any host ever holding the whole batch.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes) with axis "data".

  The axis type is Auto so that global-view code (jnp on the whole batch) works under `jit` and XLA's
  partitioner inserts the collectives; the contrastive loss adds its own `shard_map` over the same axis.
  """
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over "data", every other axis whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full copy on every device (parameters, optimizer state, step, keys)."""
  return NamedSharding(mesh, P())


def num_processes_in(mesh: Mesh) -> int:
  return len({d.process_index for d in mesh.devices.flat})


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Clips this process reads per step: global_batch_size // process_count.

  The global batch must divide evenly over the mesh's devices (each device gets the same number of rows)
  and therefore over its processes (each process owns the same number of devices).
  """
  n_dev = mesh.devices.size
  if global_batch_size <= 0 or global_batch_size % n_dev:
    raise ValueError(
        f"train.global_batch_size={global_batch_size} must be a positive multiple of the {n_dev} devices "
        f"of the mesh (e.g. {n_dev * max(1, round(max(global_batch_size, 1) / n_dev))}).")
  return global_batch_size // num_processes_in(mesh)


def global_batch_from_local(local_batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Process-local numpy batch (this process's rows) -> global arrays sharded over "data".

  local_batch: dict of arrays with leading axis global_batch // process_count. The global array's rows are
  the processes' slices in process order (`make_array_from_process_local_data` places this process's rows
  on its addressable devices of the mesh).
  """
  sharding = batch_sharding(mesh)
  n_proc = num_processes_in(mesh)

  def to_global(x):
    x = np.asarray(x)
    global_shape = (x.shape[0] * n_proc,) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, global_shape)

  # This is the loop's one deliberate host-to-device copy. With several processes JAX routes it through a
  # callback that the loop's transfer_guard("disallow") would count as implicit, so allow it here only.
  with jax.transfer_guard_host_to_device("allow"):
    return {k: to_global(v) for k, v in local_batch.items()}


def per_shard(fn: Callable[[jax.Array], jax.Array], mesh: Mesh | None) -> Callable[[jax.Array], jax.Array]:
  """fn applied to each device's rows of x [batch, ...] (a shard_map over "data"), for row-wise fns.

  Why: XLA's partitioner does not keep some row-wise ops sharded along the batch: the frontend's FFT over
  a batch-sharded input compiled to an all-gather of every clip's STFT frames onto every device. Under a
  shard_map each device provably works on its own rows only. fn must treat rows independently, so the
  result equals fn on the global array. mesh None or of one device: fn itself.
  """
  if mesh is None or mesh.devices.size == 1:
    return fn
  return jax.shard_map(fn, mesh=mesh, in_specs=P(DATA_AXIS), out_specs=P(DATA_AXIS), check_vma=False)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Host pytree (identical on every process) -> replicated global arrays on the mesh."""
  return jax.device_put(tree, replicated(mesh))
