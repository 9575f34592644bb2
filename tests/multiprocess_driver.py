r"""avcl.main's training, fed fixed global batches, for the multi-process equivalence test.

Same flags as `python -m avcl.main` (it reuses them) plus `--losses_out`. Every process slices the same
deterministic global batch for each step (rows in process order, as `sharding.global_batch_from_local`
assembles them), so a run with N processes and a run with one process see identical global batches and
must log the same losses. Each process writes `LOSSES_OUT.p<i>.json`: the step it started from (the one
`checkpoints.agreed_latest_step` agreed on), the process and device counts, and `[step, loss]` per step.

    python -m launch.local --num-processes 2 ... (tests build these command lines with module=this one)
"""
import json
import os

from absl import app, flags

from avcl import main as avcl_main  # Defines --config, --workdir, --distributed, ... (reused as is).
from data_pipeline import tf_cpu

_LOSSES_OUT = flags.DEFINE_string("losses_out", None, "Path prefix of the per-process JSON results.")


def fixed_batches(config, start_step: int, process_index: int, process_count: int):
  """This process's rows of the global batch of every step after `start_step` (noise, but deterministic)."""
  import numpy as np

  from avcl import train
  b = config.train.global_batch_size
  rows = slice(process_index * b // process_count, (process_index + 1) * b // process_count)
  n_samples = round(config.data.clip_seconds * config.audio.sample_rate)
  n_frames = round(config.data.clip_seconds * config.data.fps)
  s = config.data.frame_size
  keys = train.batch_keys(config)
  step = start_step
  while True:
    step += 1
    rng = np.random.default_rng(1000 + step)  # Depends on the global step only.
    batch = {"audio": rng.uniform(-0.5, 0.5, [b, n_samples]).astype(np.float32),
             "frames": rng.integers(0, 256, [b, n_frames, s, s, 3], dtype=np.uint8)}
    yield {k: batch[k][rows] for k in keys}


def main(argv):
  del argv
  tf_cpu.import_tf()  # GPUs hidden from TensorFlow before JAX loads.
  import jax

  from avcl import checkpoints, train
  avcl_main.initialize_distributed(avcl_main._DISTRIBUTED.value, avcl_main._COORDINATOR.value,  # pylint: disable=protected-access
                                   avcl_main._NUM_PROCESSES.value, avcl_main._PROCESS_ID.value)  # pylint: disable=protected-access
  config, workdir = avcl_main._CONFIG.value, avcl_main._WORKDIR.value  # pylint: disable=protected-access
  manager = checkpoints.make_manager(workdir, keep=config.train.keep_checkpoints)
  start = checkpoints.agreed_latest_step(manager) or 0
  manager.close()
  out = train.train(config, workdir, batches=fixed_batches(config, start, jax.process_index(),
                                                           jax.process_count()))
  result = {"start_step": start, "process_index": jax.process_index(), "process_count": jax.process_count(),
            "device_count": jax.device_count(), "status": out["status"], "step": out["step"],
            "losses": [[s, m["loss"]] for s, m in out["history"]]}
  path = f"{_LOSSES_OUT.value}.p{jax.process_index()}.json"
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(result, f)


if __name__ == "__main__":
  app.run(main)
