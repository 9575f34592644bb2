"""Tiny synthetic pretraining data for training tests: shards written with the schema writer, and
in-memory global batches (deterministic per step) for tests that bypass tf.data."""
import contextlib
import io
import os
import tempfile

import numpy as np
from PIL import Image

from data_pipeline import schema

# XLA's persistent compilation cache for the training tests: the tiny train step compiles in 20-40 s on a
# loaded 2-core machine, and most tests compile the very same program (test_tiny's defaults), so later
# tests and later runs load it instead. JAX keys entries by program, flags and version.
JAX_CACHE_DIR = os.path.join(tempfile.gettempdir(), f"avcl-test-jax-cache-{os.getuid()}")


@contextlib.contextmanager
def compilation_cache():
  import jax  # pylint: disable=g-import-not-at-top
  old = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_compilation_cache_dir", JAX_CACHE_DIR)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  try:
    yield JAX_CACHE_DIR
  finally:
    jax.config.update("jax_compilation_cache_dir", old[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


def _jpeg(rgb: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
  return buf.getvalue()


def write_pretrain_shards(root: str, *, num_clips: int = 32, seconds: float = 1.0, sample_rate: int = 16000,
                          fps: float = 4.0, size: int = 16, num_shards: int = 2, seed: int = 0) -> str:
  """Writes ROOT/pretrain/train-*.tfrecord: clips whose tone pitch and frame colour share a class, so the
  audio does predict the video. Returns ROOT."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * sample_rate)) / sample_rate
  clips = []
  for i in range(num_clips):
    k = i % 8
    audio = 0.3 * np.sin(2 * np.pi * (200 + 150 * k) * t) + 0.05 * rng.standard_normal(t.size)
    colour = np.array([30 * k, 255 - 30 * k, 128], np.float64)
    frames = []
    for _ in range(int(seconds * fps)):
      img = np.clip(colour + 20 * rng.standard_normal((size, size, 3)), 0, 255).astype(np.uint8)
      frames.append(_jpeg(img))
    clips.append(schema.Clip(video_id=f"clip{i:04d}", audio=audio.astype(np.float32), sample_rate=sample_rate,
                             frames=frames, fps=fps, start_us=0, end_us=int(seconds * 1e6),
                             label_index=[k], label_string=[f"class{k}"]))
  schema.write_shards(clips, os.path.join(root, "pretrain"), "train", num_shards)
  return root


def global_batch(step: int, config) -> dict[str, np.ndarray]:
  """The global batch of `step` for `config` (numpy, deterministic): {"audio", "frames"}."""
  rng = np.random.default_rng(1000 + step)
  b = config.train.global_batch_size
  n = int(round(config.data.clip_seconds * config.audio.sample_rate))
  t = np.arange(n) / config.audio.sample_rate
  pitch = rng.uniform(100, 2000, (b, 1))
  audio = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.05 * rng.standard_normal((b, n))
  f = max(1, int(round(config.data.clip_seconds * config.data.fps)))
  s = config.data.frame_size
  frames = rng.integers(0, 256, (b, f, s, s, 3), dtype=np.uint8)
  return {"audio": audio.astype(np.float32), "frames": frames}


def local_slice(batch: dict[str, np.ndarray], process_index: int, process_count: int) -> dict[str, np.ndarray]:
  """Rows of `batch` that process `process_index` of `process_count` feeds (contiguous blocks)."""
  out = {}
  for k, v in batch.items():
    n = v.shape[0] // process_count
    out[k] = v[process_index * n:(process_index + 1) * n]
  return out
