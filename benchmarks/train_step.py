r"""Train-step throughput: step time, clips/s, XLA's FLOP count and utilisation of the measured matmul rate.

    python -m benchmarks.train_step [--configs default,paper] [--paper_batch 4] [--steps 5] [--dtype float32]
        [--compare main,no_donation,autodiff_bn,lax_small_convs,ynnpack_convs] [--frame_sizes 16,32,64,112]
        [--default_batches 1024] [--matmul_n 8192] [--peak_tflops 989]

For each config: the jitted train step (frontend, mixing, encoders, contrastive loss, optimizer update) of
avcl.train on synthetic batches over all devices JAX sees (by default one CPU device that uses every core;
on a GPU machine, the GPU), with its per-device peak memory from XLA's memory_analysis() (the figure
benchmarks/scale_check.py gives from the CPU backend for any device count). XLA's `cost_analysis()` of
the compiled step gives its FLOP count; dividing by the measured step time gives the achieved FLOP/s,
which is compared with the rate of a large float32 (or bfloat16, with --dtype) matmul measured in the
same run on the same devices: the practical ceiling.
Two FLOP counts are printed: the compiled step's ("GFLOP/step", what this backend's optimised program
executes, which on a GPU may leave out work done inside library calls) and the lowered, unoptimised HLO's
("model GFLOP/step", the same on every backend; where a backend gives no such count, the HLO lowered
for the CPU backend): the second over the step time is the model FLOPs
utilisation, against the measured matmul rate and, with --peak_tflops, against the spec-sheet peak.

"paper" is configs/paper_audioset.py (CNN14 + Res1dNet31 + TSM-ResNet50 at 64 px, 32 frames) at a reduced
global batch (--paper_batch); "default" is configs/default.py as it trains on the embedded world.

--compare also builds the same step with one speed change undone (VARIANTS: the train state not donated;
BatchNorm's backward by autodiff; tiny-map convolutions by XLA's kernel; XLA:CPU's convolutions by YNNPACK
instead of Eigen; "main": all four) and times all
variants round-robin in the same run, so the "x first row" column is a before/after ratio that load changes
hit alike. XLA's FLOP count differs a little between variants (im2col multiplies the zero padding, a custom
VJP changes which ops exist); with "main" compared, "util % (main FLOPs)" divides main's count, the work the
model needs, by each variant's time, so that a speed change cannot raise utilisation by adding FLOPs.
"""
import argparse
import copy
import dataclasses
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from avcl import (
  host_memory,  # noqa: E402
  sharding,  # noqa: E402
  train,  # noqa: E402
)
from avcl.models import conv as conv_lib  # noqa: E402
from configs import default as default_config  # noqa: E402
from configs import paper_audioset  # noqa: E402

# Variants of the step that --compare times beside it (each undoes one speed change).
VARIANTS = {"": "as trained", "no_donation": "train state not donated",
            "autodiff_bn": "BatchNorm backward by autodiff, not its custom VJP",
            "lax_small_convs": "convs onto <= 4-position maps by XLA's kernel, not im2col",
            "ynnpack_convs": "XLA:CPU's convolutions by YNNPACK (XLA's default), not Eigen",
            "main": "all of these undone: the step as on main"}


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
  if not cost:  # Some backends (JAX 0.11 on GPU) give no count for the lowered HLO.
    return float("nan")
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


def _model_flops_on_cpu(config, batch) -> float:
  """FLOPs of the step's lowered HLO for one CPU device: the global step's model FLOPs.

  Used when the devices at hand cannot give that count: JAX 0.11 on a GPU returns no cost analysis for
  lowered HLO, and the compiled GPU step's count leaves out the convolutions that cuDNN runs (seen on an
  H200: 2.45 GFLOP for a step whose HLO holds 15.8); and on a mesh of several devices the lowered HLO
  counts the bodies of its shard_maps (the mixing partners' move, the per-shard frontend, the loss) for one
  device's shard, not for the global batch. So the same step is traced again for one CPU device, which is
  lowered only, never compiled or run.
  """
  mesh = sharding.make_mesh(jax.devices("cpu")[:1])
  trainer = train.make_trainer(config, mesh)
  spec = sharding.batch_sharding(mesh)
  abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=spec) for k, v in batch.items()}
  return _flops(trainer.step.lower(trainer.abstract_state, abstract_batch))


def _progress(name: str, what: str) -> None:
  # Printed as it happens, so that a run cut off by a time limit still shows which phase took the time.
  print(f"  [{time.strftime('%H:%M:%S')}] {name}: {what}", flush=True)


class _Bench:
  """One compiled step of `config` (variant: a key of VARIANTS), with its state and a batch stream."""

  def __init__(self, name, config, variant: str = ""):
    self.name = name
    mesh = sharding.make_mesh()
    # Each variant is the config's own speed options undone (a copy of the config; nothing global).
    config = copy.deepcopy(config)
    if variant in ("autodiff_bn", "main"):
      config.model.bn_backward = "autodiff"
    if variant in ("lax_small_convs", "main"):
      config.model.im2col_max_positions = 0
    if variant in ("ynnpack_convs", "main"):
      config.model.cpu_conv_library = "ynnpack"
    self.config = config
    trainer = train.make_trainer(config, mesh)
    if variant in ("no_donation", "main"):  # The same step jitted without donating the train state.
      step_fn = train.make_train_step(config, mesh, trainer.graphdef, trainer.tx, trainer.schedule)
      options = conv_lib.compiler_options(config.model.cpu_conv_library, mesh.devices.flat[0].platform)
      trainer = dataclasses.replace(trainer, step=jax.jit(
          step_fn, in_shardings=(trainer.state_sharding, sharding.batch_sharding(mesh)),
          out_shardings=(trainer.state_sharding, sharding.replicated(mesh)), compiler_options=options))
    t0 = time.perf_counter()
    self.state = trainer.init()
    jax.block_until_ready(self.state)
    self.init_s = time.perf_counter() - t0
    _progress(name, f"state initialised in {self.init_s:.1f} s")
    self.mesh, self.rng = mesh, np.random.default_rng(0)
    batch = self._batch()
    t0 = time.perf_counter()
    lowered = trainer.step.lower(self.state, batch)
    # The lowered (unoptimised) HLO's count is the same on every backend: the model FLOPs of MFU.
    self.model_flops = _flops(lowered) if mesh.devices.size == 1 else float("nan")
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - t0
    _progress(name, f"step compiled in {self.compile_s:.1f} s")
    self.flops = _flops(self.compiled)
    mem = self.compiled.memory_analysis()  # Per device, as benchmarks.scale_check reports it.
    self.peak_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                       - mem.alias_size_in_bytes) if mem is not None else float("nan")
    if np.isnan(self.model_flops):
      self.model_flops = _model_flops_on_cpu(config, batch)
    t0 = time.perf_counter()
    self.state, self.metrics = self.compiled(self.state, batch)  # Warm-up (first run allocates).
    jax.block_until_ready(self.metrics)
    _progress(name, f"first step ran in {time.perf_counter() - t0:.1f} s")
    self.times = []

  def _batch(self):
    batch = sharding.global_batch_from_local(_synthetic_batch(self.config, self.rng), self.mesh)
    return jax.block_until_ready(batch)

  def step(self):
    batch = self._batch()
    t = time.perf_counter()
    self.state, self.metrics = self.compiled(self.state, batch)
    jax.block_until_ready(self.metrics)
    self.times.append(time.perf_counter() - t)

  def row(self) -> dict:
    step_s = float(np.median(self.times))
    b = self.config.train.global_batch_size
    return {"name": self.name, "batch": b, "init_s": self.init_s, "compile_s": self.compile_s,
            "step_s": step_s, "clips_per_s": b / step_s, "flops": self.flops,
            "flops_per_s": self.flops / step_s, "model_flops": self.model_flops,
            "peak_bytes": self.peak_bytes,
            "loss": float(self.metrics["loss"])}


def main():
  # What avcl's entry points do on the CPU: keep freed pages mapped for XLA's buffers (avcl/host_memory.py).
  host_memory.apply(platform=jax.default_backend())
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--configs", default="default,paper", help="comma-separated: default, paper")
  p.add_argument("--paper_batch", type=int, default=4, help="global batch of the paper-size config")
  p.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
  p.add_argument("--dtype", default="float32", help="model compute dtype (and matmul dtype): float32|bfloat16")
  p.add_argument("--compare", default="",
                 help="comma-separated variants also timed, each against the default step in the same run: "
                      + ", ".join(f"{k} ({v})" for k, v in VARIANTS.items() if k))
  p.add_argument("--frame_sizes", default="",
                 help="comma-separated video resolutions (px) at which the default config is also timed, "
                      "round robin in the same run (the study of docs/study.md: throughput vs resolution)")
  p.add_argument("--matmul_n", type=int, default=2048, help="size of the reference matmul")
  p.add_argument("--default_batches", default="",
                 help="comma-separated global batch sizes at which the default config is also timed "
                      "(its own batch, 64, is launch-bound on a GPU)")
  p.add_argument("--peak_tflops", type=float, default=0.0,
                 help="the device's spec-sheet peak rate (TFLOP/s, in --dtype) for an MFU column, e.g. "
                      "989 for an H100/H200 SXM in dense bfloat16; 0: no such column")
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
    variants = [v for v in args.compare.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
      raise SystemExit(f"--compare: unknown variants {sorted(unknown)} (choose from {list(VARIANTS)})")
    benches = [_Bench(f"{name} ({VARIANTS[v]})" if v else name, config, v) for v in [""] + variants]
    if name == "default":
      for size in (int(x) for x in args.frame_sizes.split(",") if x):
        sized = config.copy_and_resolve_references()
        sized.data.frame_size = size
        benches.append(_Bench(f"default @ {size} px video", sized, ""))
      for batch in (int(x) for x in args.default_batches.split(",") if x):
        sized = config.copy_and_resolve_references()
        sized.train.global_batch_size = batch
        benches.append(_Bench(f"default @ batch {batch}", sized, ""))
    for b in benches:
      print(f"  {b.name}: compile {b.compile_s:.1f} s, init {b.init_s:.1f} s", flush=True)
    # Round robin over the variants, so that a change in the machine's load hits them all alike.
    for _ in range(args.steps):
      for b in benches:
        b.step()
    main_flops = next((b.flops for b, v in zip(benches, [""] + variants) if v == "main"), None)
    rows.extend(dict(b.row(), base_s=benches[0].row()["step_s"], main_flops=main_flops) for b in benches)

  header = ("config", "batch", "step ms", "x first row", "clips/s", "GFLOP/step", "GFLOP/s", "util %",
            "util % (main FLOPs)", "model GFLOP/step", "model util %", "peak GiB/device")
  if args.peak_tflops:
    header += (f"MFU % of {args.peak_tflops:g} TFLOP/s",)
  print()
  print(" | ".join(header))
  print(" | ".join("---" for _ in header))
  for r in rows:
    print(" | ".join([r["name"], str(r["batch"]), f"{1e3 * r['step_s']:.1f}",
                      f"{r['step_s'] / r['base_s']:.2f}", f"{r['clips_per_s']:.1f}",
                      f"{r['flops'] / 1e9:.2f}", f"{r['flops_per_s'] / 1e9:.1f}",
                      f"{100 * r['flops_per_s'] / ceiling:.1f}",
                      "" if r["main_flops"] is None else f"{100 * r['main_flops'] / r['step_s'] / ceiling:.1f}",
                      f"{r['model_flops'] / 1e9:.2f}", f"{100 * r['model_flops'] / r['step_s'] / ceiling:.1f}",
                      f"{r['peak_bytes'] / 2**30:.2f}"]
                     + ([f"{100 * r['model_flops'] / r['step_s'] / (args.peak_tflops * 1e12):.1f}"]
                        if args.peak_tflops else [])))


if __name__ == "__main__":
  main()
