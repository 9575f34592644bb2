"""One process of a multi-process training test (started by tests/test_train_subprocess.py).

  python -m tests.mp_train_worker --port P --num_processes N --process_id I --workdir W --out OUT.json

Joins a jax.distributed cluster on 127.0.0.1:P (CPU collectives, 2 simulated devices per process), trains
the tiny config on the deterministic global batches of tests/tiny_data.py (each process feeding its own
contiguous rows) and writes the logged metrics of every step to OUT.json.
"""
import argparse
import json
import os
import signal

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # pylint: disable=g-import-not-at-top


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--port", type=int, required=True)
  p.add_argument("--num_processes", type=int, required=True)
  p.add_argument("--process_id", type=int, required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--num_steps", type=int, default=3)
  p.add_argument("--sigterm_process", type=int, default=-1,
                 help="this process sends itself SIGTERM while fetching batch --sigterm_step")
  p.add_argument("--sigterm_step", type=int, default=0)
  args = p.parse_args()
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                             process_id=args.process_id)
  from avcl import train  # pylint: disable=g-import-not-at-top
  from tests import (
    test_train,  # pylint: disable=g-import-not-at-top
    tiny_data,  # pylint: disable=g-import-not-at-top
  )

  config = test_train.multiprocess_config(args.num_steps)

  def batches():
    step = 0
    while True:
      if jax.process_index() == args.sigterm_process and step == args.sigterm_step:
        os.kill(os.getpid(), signal.SIGTERM)  # Only this process is "preempted".
      yield tiny_data.local_slice(tiny_data.global_batch(step, config), jax.process_index(), jax.process_count())
      step += 1

  result = train.train(config, args.workdir, batches=batches())
  with open(args.out, "w") as f:
    json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
               "devices": jax.device_count(), "step": result["step"], "status": result["status"],
               "history": result["history"]}, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
