r"""Train-step throughput: step time, clips/s, XLA's FLOP count and utilisation of the measured matmul rate.

    python -m benchmarks.train_step [--configs default,paper] [--paper_batch 4] [--steps 5] [--dtype float32]
        [--compare-donation]

For each config: the jitted train step (frontend, mixing, encoders, contrastive loss, optimizer update) of
avcl.train on synthetic batches over all devices JAX sees (by default one CPU device that uses every core;
on a GPU machine, the GPU). XLA's `cost_analysis()` of the compiled step gives its FLOP count; dividing by
the measured step time gives the achieved FLOP/s, which is compared with the rate of a large float32 (or
bfloat16, with --dtype) matmul measured in the same run on the same devices: the practical ceiling.

"paper" is configs/paper_audioset.py (CNN14 + Res1dNet31 + TSM-ResNet50 at 64 px, 32 frames) at a reduced
global batch (--paper_batch); "default" is configs/default.py as it trains on the embedded world.
"""
import argparse
import dataclasses
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from avcl import (
  sharding,  # noqa: E402
  train,  # noqa: E402
)
from configs import default as default_config  # noqa: E402
from configs import paper_audioset  # noqa: E402


def matmul_rate(dtype: str, n: int, repeats: int) -> float:
  """FLOP/s of an n x n @ n x n matmul on the first device (best of `repeats`)."""
  dt = jnp.dtype(dtype)
  a = jax.random.normal(jax.random.key(0), (n, n), dt)
  b = jax.random.normal(jax.random.key(1), (n, n), dt)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def _synthetic_batch(config, rng):
  b = config.train.global_batch_size
  n = int(round(config.data.clip_seconds * config.audio.sample_rate))
  f = max(1, int(round(config.data.clip_seconds * config.data.fps)))
  s = config.data.frame_size
  batch = {"audio": rng.uniform(-0.5, 0.5, (b, n)).astype(np.float32)}
  if "frames" in train.batch_keys(config):
    batch["frames"] = rng.integers(0, 256, (b, f, s, s, 3), dtype=np.uint8)
  return batch


def bench(name, config, steps: int, donate: bool = True) -> dict:
  mesh = sharding.make_mesh()
  trainer = train.make_trainer(config, mesh)
  if not donate:  # The same step jitted without donating the train state (for comparison only).
    step_fn = train.make_step_fn(config, trainer.graphdef, trainer.tx, trainer.schedule, mesh)
    trainer = dataclasses.replace(trainer, step=jax.jit(
        step_fn, in_shardings=(trainer.state_sharding, sharding.batch_sharding(mesh)),
        out_shardings=(trainer.state_sharding, sharding.replicated(mesh))))
  t0 = time.perf_counter()
  state = trainer.init()
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  batch = sharding.global_batch_from_local(_synthetic_batch(config, rng), mesh)
  t0 = time.perf_counter()
  compiled = trainer.step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  flops = _flops(compiled)
  state, metrics = compiled(state, batch)  # Warm-up (first run allocates).
  jax.block_until_ready(metrics)
  times = []
  for _ in range(steps):
    batch = sharding.global_batch_from_local(_synthetic_batch(config, rng), mesh)
    jax.block_until_ready(batch)
    t = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  return {"name": name, "batch": config.train.global_batch_size, "init_s": init_s, "compile_s": compile_s,
          "step_s": step_s, "clips_per_s": config.train.global_batch_size / step_s, "flops": flops,
          "flops_per_s": flops / step_s, "loss": float(metrics["loss"])}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", default="default,paper", help="comma-separated: default, paper")
  p.add_argument("--paper_batch", type=int, default=4, help="global batch of the paper-size config")
  p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
  p.add_argument("--dtype", default="float32", help="model compute dtype (and matmul dtype): float32|bfloat16")
  p.add_argument("--compare-donation", action="store_true",
                 help="also time each config's step jitted without donating the train state")
  p.add_argument("--matmul_n", type=int, default=2048, help="size of the reference matmul")
  args = p.parse_args()

  devices = jax.devices()
  print(f"JAX {jax.__version__} on {len(devices)} x {devices[0].device_kind} ({devices[0].platform}); "
        f"{os.cpu_count()} CPU cores")
  ceiling = matmul_rate(args.dtype, args.matmul_n, repeats=5) * len(devices)
  print(f"measured matmul ceiling ({args.dtype}, {args.matmul_n}^3, x{len(devices)} devices): "
        f"{ceiling / 1e9:.1f} GFLOP/s")

  rows = []
  for name in args.configs.split(","):
    if name == "default":
      config = default_config.get_config()
    elif name == "paper":
      config = paper_audioset.get_config()
      config.train.global_batch_size = args.paper_batch
    else:
      raise SystemExit(f"--configs: unknown config {name!r} (default, paper)")
    config.model.dtype = args.dtype
    for donate in (True, False) if args.compare_donation else (True,):
      rows.append(bench(name if donate else f"{name} (no donation)", config, args.steps, donate=donate))
      r = rows[-1]
      print(f"  {r['name']}: compile {r['compile_s']:.1f} s, init {r['init_s']:.1f} s", flush=True)

  header = ("config", "batch", "step ms", "clips/s", "GFLOP/step", "GFLOP/s", "util %")
  print()
  print(" | ".join(header))
  print(" | ".join("---" for _ in header))
  for r in rows:
    print(" | ".join([r["name"], str(r["batch"]), f"{1e3 * r['step_s']:.1f}", f"{r['clips_per_s']:.1f}",
                      f"{r['flops'] / 1e9:.2f}", f"{r['flops_per_s'] / 1e9:.1f}",
                      f"{100 * r['flops_per_s'] / ceiling:.1f}"]))


if __name__ == "__main__":
  main()
