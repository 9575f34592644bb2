"""The record format: one `tf.train.SequenceExample` per clip, keys in the DMVR convention.

Every producer (`ingest`, `world.generator`, the Beam pipeline) writes through `serialize`/`write_shards` and every
consumer reads through `parse` (numpy) or `parse_tf` (tf.data), so the format lives in this file only.

Context (per clip):
  `video_id`                 bytes     source id (file path relative to the ingest input, or generator id).
                                       Not unique: a source longer than ingest's --max-clip-seconds is cut
                                       into consecutive clips, one record each, with the same `video_id`.
  `clip/start/timestamp`     int64     start of the clip in the source, microseconds (with `video_id`, what
                                       tells the clips of one source apart).
  `clip/end/timestamp`       int64     end of the clip in the source, microseconds.
  `clip/label/index`         int64[k]  label indices (empty list: unlabelled).
  `clip/label/string`        bytes[k]  label names, parallel to `clip/label/index`.
  `audio/sample_rate`        int64     Hz of `WAVEFORM/feature/floats`.
  `image/fps`                float     frames per second of `image/encoded`.
  `avcl/format_version`      int64     FORMAT_VERSION of the writer (extra key, not DMVR). Records written
                                       by other DMVR tools lack it and read as version 0; records newer
                                       than this reader are rejected.
Feature lists:
  `image/encoded`            one bytes feature per frame: a JPEG (RGB).
  `WAVEFORM/feature/floats`  mono float32 samples in [-1, 1]. avcl writes one feature holding every sample;
                             readers concatenate all features, so chunked DMVR conversions read too.

Alignment contract: frame `k` shows the source at `start + k / fps` and audio sample `j` plays at
`start + j / sample_rate`; the first frame and the first sample are at the same instant, so a crop that
starts at time `t` takes frames from `ceil(t * fps)` and samples from `round(t * sample_rate)`.

Shards: `{split}-{i:05d}-of-{n:05d}.tfrecord` (standard TFRecord framing, uncompressed).

Protobuf classes are built here from a private descriptor pool (wire-compatible with TensorFlow's
`example.proto`), so serialising and numpy parsing never import TensorFlow; only `parse_tf` and the TFRecord
writer do, and they hide GPUs from it first.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import struct
from collections.abc import Iterable, Iterator

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from data_pipeline import paths as _paths  # `paths` is a common local name here.
from data_pipeline import tf_cpu

FORMAT_VERSION = 1

# Keys (DMVR convention, plus the format version).
VIDEO_ID = "video_id"
START = "clip/start/timestamp"
END = "clip/end/timestamp"
LABEL_INDEX = "clip/label/index"
LABEL_STRING = "clip/label/string"
SAMPLE_RATE = "audio/sample_rate"
FPS = "image/fps"
VERSION = "avcl/format_version"
FRAMES = "image/encoded"
WAVEFORM = "WAVEFORM/feature/floats"

_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.tfrecord$")


@dataclasses.dataclass
class Clip:
  """One clip as numpy/Python values.

  `audio`: f32[n] mono in [-1, 1] at `sample_rate`; `frames`: JPEG bytes, one per frame at `fps`;
  `start_us`/`end_us`: the clip's span in its source (microseconds).
  """
  video_id: str
  audio: np.ndarray
  sample_rate: int
  frames: list[bytes]
  fps: float
  start_us: int
  end_us: int
  label_index: list[int] = dataclasses.field(default_factory=list)
  label_string: list[str] = dataclasses.field(default_factory=list)

  @property
  def duration_s(self) -> float:
    return (self.end_us - self.start_us) / 1e6


# ----------------------------------------------------------------------------------------------------------
# Protobuf messages without TensorFlow.

def _build_messages():
  f = descriptor_pb2.FileDescriptorProto(name="avcl_example.proto", package="avcl_example", syntax="proto3")
  label_rep = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
  label_opt = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
  t = descriptor_pb2.FieldDescriptorProto

  def message(name, fields):
    m = f.message_type.add(name=name)
    for field in fields:
      m.field.add(**field)
    return m

  def field(name, number, type_, label=label_opt, type_name=None, oneof=None, packed=None):
    d = dict(name=name, number=number, type=type_, label=label)
    if type_name:
      d["type_name"] = type_name
    if oneof is not None:
      d["oneof_index"] = oneof
    if packed is not None:
      d["options"] = descriptor_pb2.FieldOptions(packed=packed)
    return d

  message("BytesList", [field("value", 1, t.TYPE_BYTES, label_rep)])
  message("FloatList", [field("value", 1, t.TYPE_FLOAT, label_rep, packed=True)])
  message("Int64List", [field("value", 1, t.TYPE_INT64, label_rep, packed=True)])
  feat = message("Feature", [
      field("bytes_list", 1, t.TYPE_MESSAGE, type_name=".avcl_example.BytesList", oneof=0),
      field("float_list", 2, t.TYPE_MESSAGE, type_name=".avcl_example.FloatList", oneof=0),
      field("int64_list", 3, t.TYPE_MESSAGE, type_name=".avcl_example.Int64List", oneof=0)])
  feat.oneof_decl.add(name="kind")

  def map_message(outer, value_type):
    entry = outer.nested_type.add(name=outer.field[0].type_name.rsplit(".", 1)[-1])
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=t.TYPE_STRING, label=label_opt)
    entry.field.add(name="value", number=2, type=t.TYPE_MESSAGE, label=label_opt, type_name=value_type)

  features = message("Features", [field("feature", 1, t.TYPE_MESSAGE, label_rep,
                                        type_name=".avcl_example.Features.FeatureEntry")])
  map_message(features, ".avcl_example.Feature")
  message("FeatureList", [field("feature", 1, t.TYPE_MESSAGE, label_rep, type_name=".avcl_example.Feature")])
  lists = message("FeatureLists", [field("feature_list", 1, t.TYPE_MESSAGE, label_rep,
                                         type_name=".avcl_example.FeatureLists.FeatureListEntry")])
  map_message(lists, ".avcl_example.FeatureList")
  message("SequenceExample", [
      field("context", 1, t.TYPE_MESSAGE, type_name=".avcl_example.Features"),
      field("feature_lists", 2, t.TYPE_MESSAGE, type_name=".avcl_example.FeatureLists")])

  pool = descriptor_pool.DescriptorPool()
  pool.Add(f)
  descriptor = pool.FindMessageTypeByName("avcl_example.SequenceExample")
  if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.22
    return message_factory.GetMessageClass(descriptor)
  return message_factory.MessageFactory(pool).GetPrototype(descriptor)


SequenceExample = _build_messages()


# ----------------------------------------------------------------------------------------------------------
# Serialise / parse.

def _check_clip(clip: Clip) -> np.ndarray:
  audio = np.asarray(clip.audio)
  if audio.ndim != 1:
    raise ValueError(f"Clip {clip.video_id!r}: audio must be mono f32[n], got shape {audio.shape}.")
  if not np.all(np.isfinite(audio)):
    raise ValueError(f"Clip {clip.video_id!r}: audio holds NaN or inf.")
  if clip.sample_rate <= 0 or clip.fps <= 0:
    raise ValueError(f"Clip {clip.video_id!r}: sample_rate ({clip.sample_rate}) and fps ({clip.fps}) "
                     "must be positive.")
  if clip.end_us < clip.start_us:
    raise ValueError(f"Clip {clip.video_id!r}: end_us {clip.end_us} < start_us {clip.start_us}.")
  if len(clip.label_index) != len(clip.label_string) and clip.label_string:
    raise ValueError(f"Clip {clip.video_id!r}: {len(clip.label_index)} label indices but "
                     f"{len(clip.label_string)} label strings.")
  return audio.astype(np.float32, copy=False)


def serialize(clip: Clip) -> bytes:
  """Clip -> serialized `tf.train.SequenceExample` (bytes)."""
  audio = _check_clip(clip)
  ex = SequenceExample()
  ctx = ex.context.feature
  ctx[VIDEO_ID].bytes_list.value.append(clip.video_id.encode("utf-8"))
  ctx[START].int64_list.value.append(int(clip.start_us))
  ctx[END].int64_list.value.append(int(clip.end_us))
  ctx[LABEL_INDEX].int64_list.value.extend(int(i) for i in clip.label_index)
  ctx[LABEL_STRING].bytes_list.value.extend(s.encode("utf-8") for s in clip.label_string)
  ctx[SAMPLE_RATE].int64_list.value.append(int(clip.sample_rate))
  ctx[FPS].float_list.value.append(float(clip.fps))
  ctx[VERSION].int64_list.value.append(FORMAT_VERSION)
  frames = ex.feature_lists.feature_list[FRAMES].feature
  for jpeg in clip.frames:
    frames.add().bytes_list.value.append(bytes(jpeg))
  ex.feature_lists.feature_list[WAVEFORM].feature.add().float_list.value.extend(audio.tolist())
  # deterministic: map entries (the context features) in key order, so the same clip gives the same bytes in
  # every process (the default order follows per-process string hashing).
  return ex.SerializeToString(deterministic=True)


def _scalar(ctx, key, kind, default):
  if key not in ctx:
    return default
  values = getattr(ctx[key], kind).value
  return values[0] if len(values) else default


def parse(serialized: bytes) -> Clip:
  """Serialized SequenceExample -> Clip (numpy; no TensorFlow, no graph)."""
  ex = SequenceExample.FromString(serialized)
  ctx = ex.context.feature
  version = _scalar(ctx, VERSION, "int64_list", 0)
  if version > FORMAT_VERSION:
    raise ValueError(f"Record format version {version} is newer than this reader ({FORMAT_VERSION}).")
  lists = ex.feature_lists.feature_list
  audio_parts = [np.asarray(f.float_list.value, np.float32) for f in lists[WAVEFORM].feature] \
      if WAVEFORM in lists else []
  audio = np.concatenate(audio_parts) if audio_parts else np.zeros([0], np.float32)
  frames = [f.bytes_list.value[0] for f in lists[FRAMES].feature] if FRAMES in lists else []
  return Clip(
      video_id=_scalar(ctx, VIDEO_ID, "bytes_list", b"").decode("utf-8"),
      audio=audio,
      sample_rate=int(_scalar(ctx, SAMPLE_RATE, "int64_list", 0)),
      frames=frames,
      fps=float(_scalar(ctx, FPS, "float_list", 0.0)),
      start_us=int(_scalar(ctx, START, "int64_list", 0)),
      end_us=int(_scalar(ctx, END, "int64_list", 0)),
      label_index=[int(i) for i in ctx[LABEL_INDEX].int64_list.value] if LABEL_INDEX in ctx else [],
      label_string=[s.decode("utf-8") for s in ctx[LABEL_STRING].bytes_list.value]
      if LABEL_STRING in ctx else [])


def parse_tf(serialized):
  """Serialized SequenceExample (scalar tf.string) -> dict of tensors, for `tf.data`.

  Keys: `video_id` string[], `audio` f32[n], `sample_rate` i64[], `fps` f32[], `frames_jpeg` string[t],
  `label_index` i64[k], `label_string` string[k], `start_us` i64[], `end_us` i64[], `format_version` i64[].
  Missing context keys (records from other DMVR tools) read as 0 / empty; consumers that need
  `sample_rate` and `fps` check them.
  """
  tf = tf_cpu.import_tf()
  context_features = {
      VIDEO_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
      START: tf.io.FixedLenFeature([], tf.int64, default_value=0),
      END: tf.io.FixedLenFeature([], tf.int64, default_value=0),
      LABEL_INDEX: tf.io.VarLenFeature(tf.int64),
      LABEL_STRING: tf.io.VarLenFeature(tf.string),
      SAMPLE_RATE: tf.io.FixedLenFeature([], tf.int64, default_value=0),
      FPS: tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
      VERSION: tf.io.FixedLenFeature([], tf.int64, default_value=0),
  }
  sequence_features = {
      FRAMES: tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True),
      WAVEFORM: tf.io.VarLenFeature(tf.float32),
  }
  ctx, seq = tf.io.parse_single_sequence_example(serialized, context_features, sequence_features)
  version = ctx[VERSION]
  with tf.control_dependencies([tf.debugging.assert_less_equal(
      version, tf.constant(FORMAT_VERSION, tf.int64),
      message=f"record format version is newer than this reader ({FORMAT_VERSION})")]):
    version = tf.identity(version)
  return {
      "video_id": ctx[VIDEO_ID],
      # Sparse values in row-major order = every waveform feature concatenated.
      "audio": seq[WAVEFORM].values,
      "sample_rate": ctx[SAMPLE_RATE],
      "fps": ctx[FPS],
      "frames_jpeg": seq[FRAMES],
      "label_index": ctx[LABEL_INDEX].values,
      "label_string": ctx[LABEL_STRING].values,
      "start_us": ctx[START],
      "end_us": ctx[END],
      "format_version": version,
  }


# ----------------------------------------------------------------------------------------------------------
# Shards.

def shard_name(split: str, index: int, num_shards: int) -> str:
  return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def fsync(path: str) -> None:
  """Flushes a file's (or a folder's) contents to the disk.

  Before a rename makes a file final, and on its folder after: otherwise a power loss or a preempted VM
  can leave the final name pointing at an empty or partial file, which a resume then takes as finished.
  """
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def replace_durably(tmp: str, path: str) -> None:
  """Renames the written file `tmp` to `path`, its data and the rename both on disk (see `fsync`)."""
  fsync(tmp)
  os.replace(tmp, path)
  fsync(os.path.dirname(os.path.abspath(path)))


def write_records(path: str, records: Iterable[bytes]) -> int:
  """Writes serialized records to one TFRecord file atomically (temp name, fsync, rename); returns count.

  A crash leaves at most a `*.tmp-*` file behind, never a truncated shard under the final name.
  """
  tf = tf_cpu.import_tf()
  tmp = f"{path}.tmp-{os.getpid()}"
  n = 0
  try:
    with tf.io.TFRecordWriter(tmp) as w:
      for r in records:
        w.write(r)
        n += 1
    replace_durably(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return n


def write_shards(clips: Iterable[Clip | bytes], directory: str, split: str, num_shards: int) -> int:
  """Writes clips round-robin into `num_shards` shards of `split`; returns the number of clips written.

  Items may be `Clip`s or already serialized records. Each shard is written atomically; shards of `split`
  with another shard count (an older run) are removed afterwards, so the split is replaced as a whole.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards must be >= 1, got {num_shards}.")
  os.makedirs(directory, exist_ok=True)
  buckets: list[list[bytes]] = [[] for _ in range(num_shards)]
  n = 0
  for i, c in enumerate(clips):
    buckets[i % num_shards].append(c if isinstance(c, (bytes, bytearray)) else serialize(c))
    n += 1
  for i, records in enumerate(buckets):
    write_records(os.path.join(directory, shard_name(split, i, num_shards)), records)
  for path in glob.glob(os.path.join(glob.escape(directory), f"{glob.escape(split)}-*-of-*.tfrecord")):
    m = _SHARD_RE.match(os.path.basename(path))
    if m and m["split"] == split and int(m["n"]) != num_shards:
      os.remove(path)
  return n


def list_shards(directory: str, split: str) -> list[str]:
  """Sorted shard paths of `split` in `directory`; errors if the split is missing or incomplete."""
  # Local or a URL (gs://): through data_pipeline.paths. Shard names never hold glob characters; the escape
  # guards a local folder whose name does.
  base = directory if _paths.is_remote(directory) else glob.escape(directory)
  found: dict[int, set[int]] = {}
  for path in _paths.glob(_paths.join(base, f"{glob.escape(split)}-*-of-*.tfrecord")):
    m = _SHARD_RE.match(os.path.basename(path))
    if m and m["split"] == split:
      found.setdefault(int(m["n"]), set()).add(int(m["i"]))
  if not found:
    raise FileNotFoundError(f"No shards of split {split!r} in {directory!r} "
                            f"(expected {shard_name(split, 0, 1).replace('00001', 'NNNNN')}).")
  if len(found) > 1:
    raise ValueError(f"Split {split!r} in {directory!r} mixes shard counts {sorted(found)}; "
                     "remove the stale shards.")
  (n, indices), = found.items()
  missing = sorted(set(range(n)) - indices)
  if missing:
    raise FileNotFoundError(f"Split {split!r} in {directory!r} is incomplete: shards {missing} of {n} "
                            "are missing.")
  return [_paths.join(directory, shard_name(split, i, n)) for i in range(n)]


def iter_records(path: str) -> Iterator[bytes]:
  """Reads a TFRecord file without TensorFlow (framing only; CRCs are not verified).

  Errors on a truncated file, naming it. `path` may be a URL (gs://).
  """
  with _paths.open_read(path) as f:
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f"{path}: truncated TFRecord header.")
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        raise ValueError(f"{path}: truncated TFRecord (record of {length} bytes cut short).")
      yield data


def count_records(path: str) -> int:
  """Number of records in a TFRecord file, by seeking over the framing (fast, no TensorFlow)."""
  n = 0
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    pos = 0
    while pos < size:
      header = f.read(12)
      if len(header) < 12:
        raise ValueError(f"{path}: truncated TFRecord header at byte {pos}.")
      (length,) = struct.unpack("<Q", header[:8])
      pos += 12 + length + 4
      if pos > size:
        raise ValueError(f"{path}: truncated TFRecord (record at byte {pos - length - 16} cut short).")
      f.seek(pos)
      n += 1
  return n


def read_clips(paths: str | Iterable[str]) -> Iterator[Clip]:
  """Parses every record of one or several TFRecord files into Clips (numpy)."""
  for path in [paths] if isinstance(paths, str) else paths:
    for record in iter_records(path):
      yield parse(record)
