"""benchmarks/train_step.py's model-FLOP count for backends without one (JAX 0.11 on a GPU): the step
lowered for the CPU backend must count what the step lowered on the devices at hand counts, and grow
linearly with the batch."""
import jax
import numpy as np

from avcl import sharding, train
from benchmarks import train_step
from configs import default


def _config(batch):
  c = default.get_config()
  c.train.global_batch_size = batch
  return c


def test_cpu_lowered_count_equals_the_step_lowered_here():
  config = _config(8)
  batch = train_step._synthetic_batch(config, np.random.default_rng(0))
  one = sharding.make_mesh(jax.devices()[:1])
  trainer = train.make_trainer(config, one)
  here = train_step._flops(trainer.step.lower(trainer.abstract_state, sharding.global_batch_from_local(batch, one)))
  on_cpu = train_step._model_flops_on_cpu(config, batch)
  assert here > 0 and on_cpu == here
  # On the tests' 8 devices the lowered HLO counts the shard_map bodies (partner move, per-shard frontend,
  # loss) for one shard only: lower than the global step's count, which is why the benchmark uses on_cpu.
  mesh = sharding.make_mesh()
  assert mesh.devices.size == 8
  trainer = train.make_trainer(config, mesh)
  sharded = train_step._flops(trainer.step.lower(trainer.abstract_state,
                                                 sharding.global_batch_from_local(batch, mesh)))
  assert sharded < on_cpu


def test_cpu_lowered_count_is_linear_in_the_batch():
  counts = {b: train_step._model_flops_on_cpu(_config(b), train_step._synthetic_batch(
      _config(b), np.random.default_rng(0))) for b in (8, 16)}
  # The contrastive loss grows with the batch squared, but is tiny next to the encoders.
  assert abs(counts[16] / counts[8] - 2.0) < 0.02, counts
