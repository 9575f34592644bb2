r"""Clips per second of ingest and of the tf.data input pipeline at the default config.

    python -m benchmarks.input_pipeline [--data DIR] [--batches 40] [--ingest-videos 16]
        [--step-clips-per-sec X]

`--data`: shards to read (a folder holding `train-*` shards, or an embedded-world root, whose `pretrain/` is
used). Without it the benchmark reads what its own ingest run wrote (synthetic 3 s, 320x240, 25 fps videos,
stored as the embedded world stores clips: 16 kHz, 10 fps, 64 px). The input pipeline runs exactly as training
uses it: configs/default.py's batch size (one process), crop length, fps, frame size and video augmentation.
`--step-clips-per-sec`: clips/s that the training step consumes (from the train benchmark); the ratio
input/step is printed (the input pipeline should be at least 2x faster).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time


def bench_ingest(num_videos: int, workdir: str, workers: int) -> tuple[float, str]:
  from data_pipeline import ingest
  from tests.video_files import make_video  # The made-up videos the ingest tests use (PyAV).
  src = os.path.join(workdir, "videos")
  os.makedirs(src, exist_ok=True)
  for i in range(num_videos):
    make_video(os.path.join(src, f"v{i:03d}.mp4"), seconds=3.0, fps=25, width=320, height=240,
               sample_rate=44100, channels=2, seed=i)
  out = os.path.join(workdir, "shards")
  # Import TensorFlow (the shard writer) before timing: a one-off cost, not a per-clip one.
  from data_pipeline import tf_cpu
  tf_cpu.import_tf()
  t = time.perf_counter()
  m = ingest.ingest(src, out, workers=workers, shard_clips=max(1, num_videos // 4), progress=False)
  dt = time.perf_counter() - t
  assert m["clips"] == num_videos, m
  return m["clips"] / dt, out


def bench_input(files, config, batches: int) -> float:
  from data_pipeline import input as inp
  d = config.data
  ds = inp.make_dataset(files, batch_size=config.train.global_batch_size, train=True,
                        clip_seconds=d.clip_seconds, sample_rate=config.audio.sample_rate, fps=d.fps,
                        frame_size=d.frame_size, seed=0, shuffle_buffer=d.shuffle_buffer,
                        video_random_crop=d.video_random_crop, video_flip=d.video_flip)
  it = ds.as_numpy_iterator()
  for _ in range(3):  # Warm-up: tracing, buffers filling.
    next(it)
  t = time.perf_counter()
  n = 0
  for _ in range(batches):
    b = next(it)
    n += b["audio"].shape[0]
  return n / (time.perf_counter() - t)


TARGET_RATIO = 2.0  # The input pipeline should outrun the training step by this factor.


def ratio_line(input_clips_per_sec: float, step_clips_per_sec: float) -> str:
  """The printed verdict: input rate / step rate against TARGET_RATIO."""
  ratio = input_clips_per_sec / step_clips_per_sec
  verdict = "OK" if ratio >= TARGET_RATIO else "BELOW"
  return (f"input / train step: {ratio:.2f}x ({verdict} the {TARGET_RATIO:g}x target; step "
          f"{step_clips_per_sec:.1f} clips/s)")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.input_pipeline", description=__doc__.split("\n\n")[0])
  p.add_argument("--data", default=None, help="Shard folder or embedded-world root (default: own ingest).")
  p.add_argument("--split", default="train", help="Split name of the shards under --data.")
  p.add_argument("--batches", type=int, default=40, help="Timed batches of the input pipeline.")
  p.add_argument("--ingest-videos", type=int, default=16, help="Synthetic videos for the ingest figure.")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Ingest worker processes.")
  p.add_argument("--skip-ingest", action="store_true", help="Only the input pipeline (needs --data).")
  p.add_argument("--step-clips-per-sec", type=float, default=None,
                 help="Clips/s consumed by the training step, to print the input/step ratio.")
  args = p.parse_args(argv)
  if args.skip_ingest and not args.data:
    p.error("--skip-ingest needs --data")

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import default
  from data_pipeline import schema
  config = default.get_config()
  print(f"machine: {os.cpu_count()} CPU cores (os.cpu_count())")
  with tempfile.TemporaryDirectory() as tmp:
    shard_dir = None
    if not args.skip_ingest:
      rate, shard_dir = bench_ingest(args.ingest_videos, tmp, args.workers)
      print(f"ingest: {rate:.2f} clips/s ({args.ingest_videos} synthetic 3 s 320x240 25 fps H.264/AAC videos, "
            f"{args.workers} workers)")
    if args.data:
      root = os.path.join(args.data, "pretrain") if os.path.isdir(os.path.join(args.data, "pretrain")) \
          else args.data
      files, source = schema.list_shards(root, args.split), root
    else:
      files, source = schema.list_shards(shard_dir, "train"), "own ingest output"
    rate = bench_input(files, config, args.batches)
    d = config.data
    print(f"input pipeline: {rate:.1f} clips/s (default config: batch {config.train.global_batch_size}, "
          f"{d.clip_seconds} s crops, {d.fps} fps, {d.frame_size} px, random crop {d.video_random_crop}, "
          f"flip {d.video_flip}; {len(files)} shards from {source})")
    if args.step_clips_per_sec:
      print(ratio_line(rate, args.step_clips_per_sec))
  return 0


if __name__ == "__main__":
  sys.exit(main())
