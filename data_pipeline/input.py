"""tf.data input pipeline: shards -> host-local batches of aligned audio and low-resolution video.

Per process (process index and count are arguments; this module never imports JAX): list of shard files ->
this process's share -> shuffle (train: epoch by epoch, one seed each, see `skip_examples`) -> parse ->
aligned temporal crop -> JPEG decode of the kept frames -> resize (optional random crop / flip) -> batch ->
prefetch.

Batch (dict of numpy-convertible tensors):
  `audio`  f32[b, round(clip_seconds * sample_rate)]  mono, in [-1, 1].
  `frames` u8[b, round(clip_seconds * fps), frame_size, frame_size, 3].
  `label`  int32[b] (single-label) or f32[b, num_classes] multi-hot (multi_label); only when num_classes.
  `mask`   bool[b]: True for real clips; False for the padding that fills the last eval batch (all True in
           training batches).

Alignment: the crop starts on a stored frame, at `t0 = f0 / stored_fps`; audio is cut from sample
`round(t0 * sample_rate)` and output frame k is the stored frame on screen at `t0 + k / fps`, i.e. stored
index `f0 + floor(k * stored_fps / fps)`. Stored frames are thereby subsampled to the configured fps.

Short clips (shorter than `clip_seconds`): audio is zero-padded at the end and the video holds its last frame,
so shapes stay fixed (a JAX step compiles once).

Sharding: with at least as many files as processes, process i reads files i, i + n, ... (whole files);
otherwise every process reads all files in order and keeps records i, i + n, ... Either way every record
goes to exactly one process. Evaluation pads every process to the same number of batches (the largest
share), so multi-host evaluation loops stay in step.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

from data_pipeline import schema, tf_cpu

_PAD_SEED = 0x5EED


def _check(name, value, ok, allowed):
  if not ok:
    raise ValueError(f"make_dataset: {name}={value!r} is out of range; allowed: {allowed}.")


def num_examples(files: Sequence[str]) -> int:
  """Records in the given TFRecord files (local files are counted by their framing, without TensorFlow)."""
  total = 0
  for f in files:
    if os.path.exists(f):
      total += schema.count_records(f)
    else:  # Remote paths (gs://...): let TensorFlow read them.
      tf = tf_cpu.import_tf()
      total += int(tf.data.TFRecordDataset(f).reduce(0, lambda n, _: n + 1))
  return total


def process_files(files: Sequence[str], process_index: int, process_count: int) -> tuple[list[str], bool]:
  """(files this process reads, whether records must be sharded further) -- see the module docstring."""
  files = list(files)
  if len(files) >= process_count:
    return files[process_index::process_count], False
  return files, True


def examples_per_process(files: Sequence[str], process_count: int) -> list[int]:
  """How many records each process gets under `process_files` sharding."""
  files = list(files)
  if len(files) >= process_count:
    return [num_examples(files[i::process_count]) for i in range(process_count)]
  n = num_examples(files)
  return [len(range(i, n, process_count)) for i in range(process_count)]


def num_eval_batches(files: Sequence[str], batch_size: int, process_count: int = 1) -> int:
  """Batches every process yields in evaluation (the same on every process)."""
  return math.ceil(max(examples_per_process(files, process_count)) / batch_size)


def _crop_and_decode(ex, seed, *, train, full_clip, n_samples, n_frames, sample_rate, fps, frame_size,
                     video_random_crop, video_flip):
  """Parsed record -> {audio f32[n_samples], frames u8[n_frames, S, S, 3]} cut at one instant."""
  tf = tf_cpu.import_tf()
  audio, jpegs = ex["audio"], ex["frames_jpeg"]
  checks = [
      tf.debugging.assert_equal(ex["sample_rate"], tf.constant(sample_rate, tf.int64), message=(
          f"stored audio/sample_rate differs from the requested sample_rate={sample_rate}; re-ingest at that "
          "rate (tf.data does not resample)")),
      tf.debugging.assert_positive(ex["fps"], message="record without a positive image/fps"),
      tf.debugging.assert_positive(tf.size(jpegs), message="record without frames (image/encoded)"),
  ]
  with tf.control_dependencies(checks):
    stored_fps = tf.cast(ex["fps"], tf.float64)
  n_audio = tf.size(audio)
  n_stored = tf.size(jpegs)
  # Duration both streams cover; the crop must fit in it.
  duration = tf.minimum(tf.cast(n_audio, tf.float64) / sample_rate, tf.cast(n_stored, tf.float64) / stored_fps)
  clip_s = n_samples / sample_rate
  spare_frames = tf.cast(tf.math.floor(tf.maximum(duration - clip_s, 0.0) * stored_fps + 1e-6), tf.int32)
  if full_clip:
    f0 = tf.constant(0, tf.int32)
  elif train:
    f0 = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=spare_frames + 1, dtype=tf.int32)
  else:
    f0 = spare_frames // 2
  t0 = tf.cast(f0, tf.float64) / stored_fps
  a0 = tf.cast(tf.math.round(t0 * sample_rate), tf.int32)
  audio = audio[a0:a0 + n_samples]
  audio = tf.pad(audio, [[0, n_samples - tf.size(audio)]])
  audio = tf.ensure_shape(audio, [n_samples])

  k = tf.range(n_frames, dtype=tf.float64)
  idx = f0 + tf.cast(tf.math.floor(k * stored_fps / fps + 1e-6), tf.int32)
  idx = tf.minimum(idx, n_stored - 1)  # Short clip: hold the last frame.
  frames = tf.map_fn(lambda j: tf.io.decode_jpeg(j, channels=3), tf.gather(jpegs, idx),
                     fn_output_signature=tf.TensorSpec([None, None, 3], tf.uint8))
  frames = _resize_frames(frames, seed, frame_size=frame_size,
                          random_crop=train and video_random_crop, flip=train and video_flip)
  return audio, tf.ensure_shape(frames, [n_frames, frame_size, frame_size, 3])


def _resize_frames(frames, seed, *, frame_size, random_crop, flip):
  """u8[t, h, w, 3] -> u8[t, S, S, 3]; one crop box and one flip per clip (the same for all its frames).

  Antialiased bilinear resizing: training video is low resolution, and plain bilinear sampling of a 2x or 4x
  downscale aliases moving edges into flicker.
  """
  tf = tf_cpu.import_tf()
  shape = tf.shape(frames)
  h, w = shape[1], shape[2]
  side = tf.minimum(h, w)
  if random_crop:
    # Random-resized crop (Inception style, milder): 40-100 % of the square's area, aspect 3/4 .. 4/3.
    s1, s2, s3, s4 = [tf.random.stateless_uniform([], seed=seed + [0, i]) for i in range(1, 5)]
    area = 0.4 + 0.6 * s1
    ratio = tf.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * s2)
    side_f = tf.cast(side, tf.float32)
    ch = tf.clip_by_value(tf.cast(tf.round(side_f * tf.sqrt(area / ratio)), tf.int32), 1, h)
    cw = tf.clip_by_value(tf.cast(tf.round(side_f * tf.sqrt(area * ratio)), tf.int32), 1, w)
    y0 = tf.cast(tf.floor(tf.cast(h - ch, tf.float32) * s3), tf.int32)
    x0 = tf.cast(tf.floor(tf.cast(w - cw, tf.float32) * s4), tf.int32)
  else:
    # Centre square: stored frames are square already; anything else is cropped, never stretched.
    ch = cw = side
    y0, x0 = (h - side) // 2, (w - side) // 2
  frames = frames[:, y0:y0 + ch, x0:x0 + cw]
  out = tf.image.resize(frames, [frame_size, frame_size], method="bilinear", antialias=True)
  if flip:
    do_flip = tf.random.stateless_uniform([], seed=seed + [0, 5]) < 0.5
    out = tf.cond(do_flip, lambda: out[:, :, ::-1], lambda: out)
  return tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)


def make_dataset(files: Sequence[str], *, batch_size: int, train: bool, clip_seconds: float, sample_rate: int,
                 fps: float, frame_size: int, process_index: int = 0, process_count: int = 1, seed: int = 0,
                 shuffle_buffer: int = 1024, video_random_crop: bool = False, video_flip: bool = False,
                 num_classes: int | None = None, multi_label: bool = False, full_clip: bool = False,
                 skip_examples: int = 0):
  """This process's batches (see the module docstring for keys, shapes, alignment and sharding).

  Train: infinite, shuffled (seeded per process), drop_remainder, random aligned crop, optional random crop
  and flip; the same seed, files and process index give the same batches.
  skip_examples (train only): start the stream after this many examples, so that it continues exactly where
  a stream of the same seed stopped (a resumed run passes steps done * batch size). Each epoch has its own
  shuffle seed, so whole epochs are skipped for free; within the current epoch the skipped records are read
  and pass the shuffle buffer but are neither parsed nor decoded, so a resume reads at most one epoch of this
  process's share (half on average), and counts the share's records first.
  Eval: one pass in file order, centre crop (`full_clip`: the crop starts at 0 instead, so pass the stored
  clip length as clip_seconds to keep whole clips), last batch padded with `mask` False; every process yields
  `num_eval_batches(files, batch_size, process_count)` batches.
  """
  tf = tf_cpu.import_tf()
  files = list(files)
  _check("files", files, len(files) > 0, "a non-empty list of TFRecord paths")
  _check("batch_size", batch_size, batch_size >= 1, ">= 1")
  _check("process_count", process_count, process_count >= 1, ">= 1")
  _check("process_index", process_index, 0 <= process_index < process_count, f"[0, {process_count})")
  _check("clip_seconds", clip_seconds, clip_seconds > 0, "> 0")
  _check("sample_rate", sample_rate, sample_rate > 0, "> 0")
  _check("fps", fps, fps > 0, "> 0")
  _check("frame_size", frame_size, 8 <= frame_size <= 1024, "[8, 1024]")
  _check("shuffle_buffer", shuffle_buffer, shuffle_buffer >= 1, ">= 1")
  _check("skip_examples", skip_examples, skip_examples >= 0 and (train or skip_examples == 0),
         ">= 0, and 0 unless train")
  if num_classes is not None:
    _check("num_classes", num_classes, num_classes >= 1, ">= 1")
  _check("multi_label", multi_label, not multi_label or num_classes is not None, "True only with num_classes")

  if train and all(os.path.exists(f) for f in files):
    # An empty share would make the infinite training stream end (or spin) without a word.
    share = examples_per_process(files, process_count)[process_index]
    if share == 0:
      raise ValueError(f"make_dataset: process {process_index} of {process_count} gets no training records "
                       f"from {len(files)} files ({files[0]!r}, ...).")
  n_samples = int(round(clip_seconds * sample_rate))
  n_frames = max(1, int(round(clip_seconds * fps)))
  local_files, shard_records = process_files(files, process_index, process_count)
  process_seed = int(seed) * 1_000_003 + process_index  # Different streams per process, reproducible.

  if train:
    # Epoch by epoch, each shuffled with its own seed (a hash of the process seed and the epoch number), so
    # that epoch e can be rebuilt without replaying epochs 0..e-1: a resume skips at most one epoch's
    # records. (One shuffle over a repeated stream would make epoch e's order depend on all before it.) The
    # cost: the shuffle buffer no longer mixes the end of one epoch with the start of the next, and it fills
    # anew at each epoch's start.

    # Records of this process per epoch, counted only to resume (local files: record headers only; remote
    # files: one read of the share through TensorFlow).
    share = examples_per_process(files, process_count)[process_index] if skip_examples else 1
    _check("files", files, share > 0, f"a non-empty share of records for process {process_index}")
    first_epoch, skip_in_epoch = divmod(skip_examples, share)

    def epoch_seed(epoch, salt):
      key = tf.stack([tf.constant(process_seed, tf.int64), epoch * 2 + salt])
      return tf.random.stateless_uniform([], seed=key, minval=None, maxval=None, dtype=tf.int64)

    def one_epoch(epoch):
      if shard_records:
        eds = tf.data.TFRecordDataset(local_files)  # Fixed order, so the record shards are disjoint.
        eds = eds.shard(process_count, process_index)
      else:
        fds = tf.data.Dataset.from_tensor_slices(local_files)
        fds = fds.shuffle(len(local_files), seed=epoch_seed(epoch, 0))
        eds = fds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(local_files), 16),
                             num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
      return eds.shuffle(shuffle_buffer, seed=epoch_seed(epoch, 1))

    ds = tf.data.Dataset.range(first_epoch, 2**62).flat_map(one_epoch)
    # Element numbers continue across epochs and over a resume: each element's random crop depends on it.
    ds = ds.enumerate(start=first_epoch * share)
    if skip_in_epoch:
      # After enumerate and before the map: skipped records are read but never parsed or decoded.
      ds = ds.skip(skip_in_epoch)
  else:
    ds = tf.data.TFRecordDataset(local_files)
    if shard_records:
      ds = ds.shard(process_count, process_index)
    ds = ds.enumerate()

  def prepare(index, serialized):
    ex = schema.parse_tf(serialized)
    # Stateless randomness keyed by (process seed, element number): reproducible under parallel map.
    elem_seed = tf.stack([tf.constant(process_seed, tf.int64), index])
    audio, frames = _crop_and_decode(
        ex, elem_seed, train=train, full_clip=full_clip, n_samples=n_samples, n_frames=n_frames,
        sample_rate=sample_rate, fps=fps, frame_size=frame_size, video_random_crop=video_random_crop,
        video_flip=video_flip)
    out = {"audio": audio, "frames": frames, "mask": tf.constant(True)}
    if num_classes is not None:
      labels = ex["label_index"]
      with tf.control_dependencies([
          tf.debugging.assert_less(labels, tf.constant(num_classes, tf.int64),
                                   message=f"label index >= num_classes={num_classes}"),
          tf.debugging.assert_non_negative(labels, message="negative label index")]):
        labels = tf.identity(labels)
      if multi_label:
        # A sum (not a max, which is -inf over an empty list) so an unlabelled clip is all-negative.
        multi_hot = tf.minimum(tf.reduce_sum(tf.one_hot(labels, num_classes, dtype=tf.float32), axis=0), 1.0)
        out["label"] = tf.ensure_shape(multi_hot, [num_classes])
      else:
        with tf.control_dependencies([tf.debugging.assert_equal(
            tf.size(labels), 1, message="single-label task: a record holds no label or several labels")]):
          out["label"] = tf.cast(labels[0], tf.int32)
    return out

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

  if train:
    ds = ds.batch(batch_size, drop_remainder=True)
  else:
    counts = examples_per_process(files, process_count)
    num_batches = math.ceil(max(counts) / batch_size)
    pad = num_batches * batch_size - counts[process_index]
    if pad:
      pad_elem = {k: tf.zeros(s.shape, s.dtype) for k, s in ds.element_spec.items()}
      pad_elem["mask"] = tf.constant(False)
      ds = ds.concatenate(tf.data.Dataset.from_tensors(pad_elem).repeat(pad))
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.apply(tf.data.experimental.assert_cardinality(num_batches))
  # Deterministic order (still parallel): the same seed gives the same batches, so runs are reproducible.
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  return ds.prefetch(tf.data.AUTOTUNE)
