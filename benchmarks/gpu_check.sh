#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one run: the train step in bfloat16 (default config at its own
# batch and at 1024; the paper-size encoders at a reduced batch) with model FLOPs utilisation, and the
# contrastive loss's peak memory and time (plain, tiled, ring) on the GPU itself.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]      # from the repository root, on a machine with a GPU
#
# Needs jax with its CUDA plugin, flax, optax, orbax-checkpoint and ml-collections (no TensorFlow: the
# benchmarks feed synthetic batches). Wheels placed in .whl/ are installed first into /tmp/site, for machines
# without network access. Each part runs under its own time limit, so that one failing part (say, the
# paper config out of memory) leaves the others' tables; every table is also written to OUT_DIR.
# PAPER_BATCH (default 64) is the paper config's global batch and PAPER_LIMIT (default 420) its time limit in
# seconds; PARTS (default: all three) picks parts. Seen on an H200 (2026-11-26, JAX 0.11.2): the paper step at
# batch 128 was still initialising or compiling after 300 s (XLA's GPU autotuning on, the default); with
# XLA_FLAGS=--xla_gpu_autotune_level=0 at batch 64 it initialised in 23 s, compiled in 21 s and ran its first
# step, but the bf16 matmul then ran at 10.6 instead of 660 TFLOP/s and 10 timed steps did not end in the
# ~250 s left: keep autotuning on and give this part the time.
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
  [[ ",${PARTS:-train_step_paper,train_step_default,contrastive}," == *",$name,"* ]] || return 0
  echo "=== $name (limit $limit s): $*"
  local t0=$SECONDS
  timeout "$limit" "$py" "$@" 2>&1 | tee "$out_dir/$name.txt"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}

# The paper config first: its compile (with XLA's convolution autotuning) and first steps are the slow part.
run train_step_paper "${PAPER_LIMIT:-420}" -m benchmarks.train_step --configs paper \
  --paper_batch "${PAPER_BATCH:-64}" --dtype bfloat16 --steps 10 --matmul_n 8192 --peak_tflops 989
run train_step_default 120 -m benchmarks.train_step --configs default --default_batches 1024 \
  --dtype bfloat16 --steps 20 --matmul_n 8192 --peak_tflops 989
run contrastive 90 -m benchmarks.contrastive_memory --native --batches 1024,4096,16384,65536 \
  --time-max-batch 65536 --repeats 10 --transit-dtypes float32
date -u
