r"""Train on one or several local GPUs, with XLA flags chosen for this workload.

One process driving every local GPU (the default; JAX sees all of them as one mesh):

    python -m launch.gpu --num-gpus 4 --config configs/default.py --workdir workdirs/gpu \
        --override train.global_batch_size=1024

or one process per GPU joined by jax.distributed (coordinator on 127.0.0.1), the layout of a multi-node
run, with one log per process in WORKDIR/logs:

    python -m launch.gpu --gpus 0,1,2,3 --process-per-gpu --config ... --workdir ...

Environment it sets (each flag below is accepted by jax/jaxlib 0.10; XLA aborts on an unknown flag, so
only long-standing flags are used and tests/test_launch.py starts jaxlib with exactly these to check):
  JAX_PLATFORMS=cuda                      fail loudly instead of silently training on the CPU.
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.90     JAX preallocates this share of each GPU (its default is 0.75);
                                          TensorFlow is kept off the GPU by the input pipeline, so JAX
                                          may take more. --no-preallocate allocates on demand instead
                                          (slower, fragments; for sharing a GPU).
  --xla_gpu_enable_latency_hiding_scheduler=true
                                          overlap the embedding all-gather and gradient all-reduce with
                                          compute (multi-GPU only; nothing to hide on one GPU).
  --xla_gpu_enable_command_buffer=...     CUDA graphs. XLA's default already captures fusions and library
                                          calls, which suits a train step replayed thousands of times, so
                                          by default the flag is left out; `--command-buffers off` passes
                                          an empty list (per-kernel profiling, debugging), or give a list
                                          such as FUSION,CUBLAS,CUDNN.
  --xla_gpu_deterministic_ops=true        with --deterministic: bitwise-reproducible steps, slower.
  JAX_COMPILATION_CACHE_DIR=DIR           JAX's persistent compilation cache (--compilation-cache, default
                                          ~/.cache/avcl/jax_compilation_cache; "" turns it off): a restart
                                          (resume after preemption, a second run of the same config) loads
                                          the compiled, autotuned step instead of compiling it again. On an
                                          H200 the paper-size step's compile with autotuning outlasted 300 s.
  JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES=all
                                          with the cache: XLA's per-fusion autotuning results and compiled
                                          GPU kernels are kept beside it too (jax's default keeps only the
                                          autotuning results), so a step that misses the cache because one
                                          shape changed still reuses every fusion's autotuning and kernel, and
                                          LLVM compiles modules in parallel (required by the kernel cache).
Not set, to try where a first compile stalls (not measured here; `bash benchmarks/gpu_check.sh` times it):
  --xla-flag=--xla_gpu_enable_triton_gemm=false: matmuls to cuBLAS instead of autotuned Triton tiles;
  --xla-flag=--xla_gpu_autotune_level=1: candidates timed without buffer initialisation or checks
  (level 0, no autotuning, left the paper step's matmuls at 1/60 of the bf16 rate on an H200).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys

from launch import common, local, procs

# The types XLA 0.10 accepts in --xla_gpu_enable_command_buffer (an unknown one aborts at start-up).
COMMAND_BUFFER_TYPES = ("FUSION", "CUBLAS", "CUBLASLT", "CUSTOM_CALL", "CUDNN", "COLLECTIVES", "CONDITIONAL",
                        "WHILE")


def xla_flags(*, num_gpus: int, command_buffers: str = "xla-default", deterministic: bool = False,
              extra=()) -> list[str]:
  """The XLA_FLAGS entries for a run over `num_gpus` GPUs (all processes together)."""
  flags = []
  if num_gpus > 1:
    flags.append("--xla_gpu_enable_latency_hiding_scheduler=true")
  if command_buffers == "off":
    flags.append("--xla_gpu_enable_command_buffer=")
  elif command_buffers != "xla-default":
    types = [t.strip().upper() for t in command_buffers.split(",") if t.strip()]
    bad = [t for t in types if t not in COMMAND_BUFFER_TYPES]
    if bad or not types:
      raise ValueError(f"--command-buffers {command_buffers!r}: expected xla-default, off, or a comma list of "
                       f"{', '.join(COMMAND_BUFFER_TYPES)}")
    flags.append("--xla_gpu_enable_command_buffer=" + ",".join(types))
  if deterministic:
    flags.append("--xla_gpu_deterministic_ops=true")
  for f in extra:
    if not f.startswith("--xla_"):
      raise ValueError(f"--xla-flag {f!r}: XLA flags look like --xla_name=value")
    flags.append(f)
  return flags


DEFAULT_COMPILATION_CACHE = "~/.cache/avcl/jax_compilation_cache"


def gpu_env(*, visible: list[int], flags: list[str], mem_fraction: float, preallocate: bool,
            platform: str, inherited_xla_flags: str = "", compilation_cache: str = "") -> dict[str, str]:
  if not 0.0 < mem_fraction <= 1.0:
    raise ValueError(f"--mem-fraction {mem_fraction}: must be in (0, 1]")
  env = {
      "JAX_PLATFORMS": platform,
      "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in visible),
      "XLA_FLAGS": " ".join([*inherited_xla_flags.split(), *flags]),
  }
  if preallocate:
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{mem_fraction:.2f}"
  else:
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
  if compilation_cache:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(os.path.expanduser(compilation_cache))
    env["JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES"] = "all"
  if not env["XLA_FLAGS"]:
    del env["XLA_FLAGS"]
  return env


def detect_gpus() -> int:
  """Number of NVIDIA GPUs `nvidia-smi -L` lists (0 when nvidia-smi is absent)."""
  if shutil.which("nvidia-smi") is None:
    return 0
  out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
  return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def parse_gpus(gpus: str | None, num_gpus: int | None, detect=None) -> list[int]:
  if gpus:
    if not re.fullmatch(r"\d+(,\d+)*", gpus):
      raise ValueError(f"--gpus {gpus!r}: expected a comma list of GPU indices like 0,1,2,3")
    ids = [int(g) for g in gpus.split(",")]
    if len(set(ids)) != len(ids):
      raise ValueError(f"--gpus {gpus!r}: a GPU is listed twice")
    return ids
  n = num_gpus if num_gpus is not None else (detect or detect_gpus)()
  if n < 1:
    raise ValueError("no GPU found by nvidia-smi: pass --num-gpus N or --gpus 0,1,...")
  return list(range(n))


def build_members(*, gpus: list[int], process_per_gpu: bool, config: str, workdir: str, mode: str,
                  overrides, log_dir: str, port: int, mem_fraction: float = 0.9, preallocate: bool = True,
                  command_buffers: str = "xla-default", deterministic: bool = False, extra_xla_flags=(),
                  platform: str = "cuda", python: str = sys.executable,
                  inherited_xla_flags: str = "", compilation_cache: str = "") -> list[procs.Member]:
  flags = xla_flags(num_gpus=len(gpus), command_buffers=command_buffers, deterministic=deterministic,
                    extra=extra_xla_flags)
  groups = [[g] for g in gpus] if process_per_gpu else [gpus]
  members = []
  for i, visible in enumerate(groups):
    if len(groups) == 1:
      dist = ["--distributed=off"]
    else:
      dist = common.distributed_flags(coordinator=f"127.0.0.1:{port}", num_processes=len(groups),
                                      process_id=i)
    env = gpu_env(visible=visible, flags=flags, mem_fraction=mem_fraction, preallocate=preallocate,
                  platform=platform, inherited_xla_flags=inherited_xla_flags,
                  compilation_cache=compilation_cache)
    argv = common.main_command(python=python, config=config, workdir=workdir, mode=mode,
                               overrides=overrides, distributed=dist)
    members.append(procs.Member(argv=argv, env=env, log_path=os.path.join(log_dir, f"process_{i}.log")))
  return members


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.gpu", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  local.add_args(p)
  g = p.add_mutually_exclusive_group()
  g.add_argument("--gpus", default=None, help="GPU indices to use, e.g. 0,1,2,3.")
  g.add_argument("--num-gpus", type=int, default=None, help="Use GPUs 0..N-1 (default: all nvidia-smi lists).")
  p.add_argument("--process-per-gpu", action="store_true",
                 help="One process per GPU with jax.distributed (default: one process for all GPUs).")
  p.add_argument("--mem-fraction", type=float, default=0.9, help="XLA_PYTHON_CLIENT_MEM_FRACTION.")
  p.add_argument("--no-preallocate", dest="preallocate", action="store_false",
                 help="Allocate GPU memory on demand (XLA_PYTHON_CLIENT_PREALLOCATE=false).")
  p.add_argument("--command-buffers", default="xla-default",
                 help="CUDA graphs: xla-default, off, or a list like FUSION,CUBLAS,CUDNN.")
  p.add_argument("--deterministic", action="store_true", help="--xla_gpu_deterministic_ops=true.")
  p.add_argument("--xla-flag", action="append", default=[], help="Extra XLA flag, repeatable.")
  p.add_argument("--platform", default="cuda", choices=("cuda", "rocm"), help="JAX_PLATFORMS value.")
  p.add_argument("--compilation-cache", default=DEFAULT_COMPILATION_CACHE, metavar="DIR",
                 help="JAX's persistent compilation cache (JAX_COMPILATION_CACHE_DIR); '' turns it off.")
  p.add_argument("--log-dir", default=None, help="Per-process logs (default WORKDIR/logs).")
  p.add_argument("--port", type=int, default=0, help="Coordinator port with --process-per-gpu (0: free).")
  a = p.parse_args(argv)
  try:
    overrides = common.parse_overrides(a.override)
    gpus = parse_gpus(a.gpus, a.num_gpus)
    members = build_members(
        gpus=gpus, process_per_gpu=a.process_per_gpu, config=a.config, workdir=a.workdir, mode=a.mode,
        overrides=overrides, log_dir=a.log_dir or local.default_log_dir(a.workdir),
        port=a.port or common.free_port(), mem_fraction=a.mem_fraction, preallocate=a.preallocate,
        command_buffers=a.command_buffers, deterministic=a.deterministic, extra_xla_flags=a.xla_flag,
        platform=a.platform, inherited_xla_flags=os.environ.get("XLA_FLAGS", ""),
        compilation_cache=a.compilation_cache)
  except ValueError as e:
    p.error(str(e))
  if a.dry_run:
    procs.print_group(members)
    return 0
  return procs.run_group(members)


if __name__ == "__main__":
  sys.exit(main())
