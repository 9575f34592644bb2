#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one run. By default the two parts nobody has measured yet:
#   train_step_paper  the paper-size step (CNN14 + Res1dNet31 + TSM-ResNet50, 64 px, 32 frames) in bfloat16 at
#                     PAPER_BATCH clips: compile time (target <= 120 s), step time, model FLOPs utilisation
#                     against the measured bf16 matmul rate (target >= 40%) and XLA's per-device peak memory;
#   memory_proxy      the same step compiled for this machine's CPU (benchmarks.scale_check, 2 devices at the
#                     same per-device batch): the per-device peak scale_check reports for pods, to set beside
#                     the GPU's own figure
#                     (docs/launch.md "What fits where" quotes the ratio).
# PARTS=train_step_paper,memory_proxy,train_step_default,contrastive adds the parts measured on 2026-11-26.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # from the repository root, on a machine with a GPU
#
# Needs jax with its CUDA plugin, flax, optax, orbax-checkpoint and ml-collections (no TensorFlow: the
# benchmarks feed synthetic batches). Wheels placed in .whl/ are installed first into /tmp/site, for machines
# without network access. Each part runs under its own time limit, so that one failing part leaves the
# others' tables; every table is also written to OUT_DIR.
# PAPER_BATCH (default 64) is the paper config's global batch, PAPER_LIMIT (default 360) its time limit in
# seconds, PAPER_XLA_FLAGS (default: --xla_gpu_enable_triton_gemm=false --xla_gpu_autotune_level=1) its
# extra XLA flags ('' for XLA's defaults).
# History: on an H200 (2026-11-26, JAX 0.11.2) the paper step at batch 128 was still initialising or
# compiling after 300 s with XLA's default autotuning; with --xla_gpu_autotune_level=0 at batch 64 it compiled
# in 21 s but its bf16 matmuls ran at 10.6 instead of 660 TFLOP/s (Triton GEMMs at untuned default tiles).
# The lowered paper step holds 298 convolutions of 181 distinct signatures (forward, data and filter
# gradients of each layer shape; `python -m benchmarks.scale_check --hlo_stats`), each a cuDNN autotuning job,
# which at level 4 (XLA's default) also initialises and checks redzone buffers for every candidate algorithm.
# Hence the default here: GEMMs to cuBLAS (no Triton tile search), convolutions still autotuned but at level 1
# (candidates timed without buffer initialisation or correctness checks), and JAX's persistent cache with
# XLA's autotuning and kernel caches in /tmp/avcl_jax_cache, so a rerun skips both. Not measured yet.
set -u
out_dir=${1:-${OUT:-/tmp/avcl_gpu_check}}
mkdir -p "$out_dir"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
if compgen -G ".whl/*.whl" >/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD

date -u
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv \
  | tee "$out_dir/gpu.txt"
"$py" -c "import jax, flax, optax, orbax.checkpoint, ml_collections, numpy;
print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'numpy', numpy.__version__)
print(jax.devices())" 2>&1 | tee -a "$out_dir/gpu.txt"

run() {  # run NAME SECONDS ARGS...: one part, its output teed to OUT_DIR/NAME.txt
  local name=$1 limit=$2
  shift 2
  [[ ",${PARTS:-train_step_paper,memory_proxy}," == *",$name,"* ]] || return 0
  echo "=== $name (limit $limit s): $*"
  local t0=$SECONDS
  timeout "$limit" "$py" "$@" 2>&1 | tee "$out_dir/$name.txt"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}

# The paper config first: its compile (with XLA's convolution autotuning) and first steps are the slow part.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/avcl_jax_cache}
export JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES=all
XLA_FLAGS="${XLA_FLAGS:-} ${PAPER_XLA_FLAGS---xla_gpu_enable_triton_gemm=false --xla_gpu_autotune_level=1}" \
  run train_step_paper "${PAPER_LIMIT:-360}" -m benchmarks.train_step --configs paper \
  --paper_batch "${PAPER_BATCH:-64}" --dtype bfloat16 --steps 10 --matmul_n 8192 --peak_tflops 989
# The CPU backend's figure for the same step and per-device batch (scale_check's proxy for accelerator
# memory). Two simulated devices, as for a pod: XLA:CPU compiles a one-device program with another
# scheduler (the paper step at 64 clips: 86.9 GiB on one device against 20.6 on each of 2 or 64).
run memory_proxy 240 -m benchmarks.scale_check --config paper --devices 2 \
  --global_batch "$((2 * ${PAPER_BATCH:-64}))" --remat off --hlo_stats
run train_step_default 120 -m benchmarks.train_step --configs default --default_batches 1024 \
  --dtype bfloat16 --steps 20 --matmul_n 8192 --peak_tflops 989
run contrastive 90 -m benchmarks.contrastive_memory --native --batches 1024,4096,16384,65536 \
  --time-max-batch 65536 --repeats 10 --transit-dtypes float32
date -u
