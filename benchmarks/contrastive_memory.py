r"""Peak device memory and time of the contrastive loss, forward + backward: plain vs tiled vs ring.

    python -m benchmarks.contrastive_memory [--batches 1024,4096,65536] [--no-time] [--devices 8]
    python -m benchmarks.contrastive_memory --batches 1048576 --no-time --devices 8   # the 1M-batch figure
    python -m benchmarks.contrastive_memory --native --time-max-batch 65536   # on the devices found (a GPU)

Memory comes from XLA's buffer assignment of the compiled per-device program
(`jit(...).lower(...).compile().memory_analysis()`: arguments + outputs + temporaries - aliased), so
it needs no allocation and works at any batch; time is the median of a few runs of the compiled step
on the simulated CPU devices (all of them share this machine's cores, so times are relative figures:
compare impls within one run). With --native, the devices JAX finds (e.g. one GPU) are used instead of
simulated CPU devices, and time is real device time. The step computes the loss of one pair ("logmel_video") and its
gradients with respect to both embeddings and the temperature. "tiled" and "ring" run once per
--transit-dtypes entry (loss.transit_dtype: "bfloat16" gathers / sends the keys in bfloat16); "plain"
only in float32.
"""
import argparse
import os
import sys

_DEVICES = 8
_NATIVE = "--native" in sys.argv
for _i, _a in enumerate(sys.argv):  # The device count must be fixed before JAX is imported.
  if _a.startswith("--devices="):
    _DEVICES = int(_a.split("=", 1)[1])
  elif _a == "--devices" and _i + 1 < len(sys.argv):
    _DEVICES = int(sys.argv[_i + 1])
if not _NATIVE:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={_DEVICES}")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P

from avcl import losses  # noqa: E402


def _step(mesh, impl, tile, transit="float32"):
  def loss(za, zb, t):
    return losses.contrastive_loss({"logmel": za, "video": zb}, {"logmel_video": 1.0}, t, mesh=mesh,
                                   impl=impl, tile_size=tile, transit_dtype=transit)[0]
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def _peak_bytes(compiled):
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batches", default="1024,2048,4096,8192,16384,32768,65536",
                      help="comma-separated global batch sizes")
  parser.add_argument("--dim", type=int, default=512, help="embedding dimension")
  parser.add_argument("--devices", type=int, default=_DEVICES, help="simulated CPU devices")
  parser.add_argument("--tile", type=int, default=1024, help="tile size for tiled/ring")
  parser.add_argument("--impls", default="plain,tiled,ring")
  parser.add_argument("--transit-dtypes", default="float32,bfloat16",
                      help="loss.transit_dtype values to run tiled/ring with")
  parser.add_argument("--native", action="store_true",
                      help="use the devices JAX finds (a GPU, a TPU) instead of --devices simulated CPU devices")
  parser.add_argument("--no-time", action="store_true", help="memory only (compile, do not run)")
  parser.add_argument("--time-max-batch", type=int, default=8192,
                      help="time only batches up to this size (larger ones: memory only)")
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)

  n = len(jax.devices())
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  impls = args.impls.split(",")
  print(f"JAX {jax.__version__}; {n} x {jax.devices()[0].device_kind} ({jax.devices()[0].platform}), dim {args.dim}, "
        f"tile {args.tile}, float32 embeddings; "
        "peak = per-device arguments + outputs + temporaries (XLA memory_analysis); wall/cpu: median "
        f"of {args.repeats} fwd+bwd steps, cpu = process CPU time over all threads; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
  header = (f"{'batch':>7} {'impl':>6} {'transit':>8} {'peak MiB':>10} {'vs plain':>9} {'wall s':>8} "
            f"{'vs plain':>9} {'cpu s':>8} {'vs plain':>9}")
  print(header)
  print("-" * len(header))
  spec = NamedSharding(mesh, P("data"))
  for b in [int(x) for x in args.batches.split(",")]:
    shape = jax.ShapeDtypeStruct((b, args.dim), jnp.float32, sharding=spec)
    temp = jax.ShapeDtypeStruct((), jnp.float32, sharding=NamedSharding(mesh, P()))
    results = {}
    runs_of = [(impl, transit) for impl in impls
               for transit in (["float32"] if impl == "plain" else args.transit_dtypes.split(","))]
    for impl, transit in runs_of:
      compiled = _step(mesh, impl, args.tile, transit).lower(shape, shape, temp).compile()
      peak = _peak_bytes(compiled)
      seconds = cpu = float("nan")
      if not args.no_time and b <= args.time_max_batch:
        rng = np.random.default_rng(0)
        z = rng.normal(size=(2, b, args.dim)).astype(np.float32)
        z /= np.linalg.norm(z, axis=-1, keepdims=True)
        za, zb = (jax.device_put(x, spec) for x in z)
        t = jax.device_put(jnp.float32(0.1), NamedSharding(mesh, P()))
        try:
          jax.block_until_ready(compiled(za, zb, t))
          runs, cpu_runs = [], []
          for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled(za, zb, t))
            runs.append(time.perf_counter() - start)
            cpu_runs.append(time.process_time() - start_cpu)
          seconds, cpu = float(np.median(runs)), float(np.median(cpu_runs))
        except jax.errors.JaxRuntimeError as e:  # Out of device memory: keep the row, say why.
          print(f"{b:>7} {impl:>6} {transit:>8} not timed: {str(e).splitlines()[0][:150]}", flush=True)
        del za, zb
      results[impl, transit] = (peak, seconds, cpu)
      ref_peak, ref_s, ref_cpu = results.get(("plain", "float32"), (peak, seconds, cpu))
      print(f"{b:>7} {impl:>6} {transit:>8} {peak / 2**20:>10.1f} {peak / ref_peak:>9.3f} {seconds:>8.3f} "
            f"{seconds / ref_s:>9.2f} {cpu:>8.3f} {cpu / ref_cpu:>9.2f}", flush=True)


if __name__ == "__main__":
  main()
