"""Record format: round trips through numpy and TensorFlow, TF proto compatibility, shards."""
import os
import subprocess
import sys

import numpy as np
import pytest

from data_pipeline import schema, tf_cpu


def make_clip(i=0, n=4800, frames=3):
  rng = np.random.default_rng(i)
  return schema.Clip(
      video_id=f"dir/vid-{i}.mp4", audio=rng.uniform(-1, 1, n).astype(np.float32), sample_rate=16000,
      frames=[bytes(rng.integers(0, 256, 50, dtype=np.uint8)) for _ in range(frames)], fps=10.0,
      start_us=1_000_000 * i, end_us=1_000_000 * i + 300_000, label_index=[i % 3, 7],
      label_string=[f"l{i % 3}", "l7"])


def assert_same(a: schema.Clip, b: schema.Clip):
  assert a.video_id == b.video_id
  np.testing.assert_array_equal(a.audio, b.audio)
  assert a.audio.dtype == np.float32
  assert a.sample_rate == b.sample_rate and a.fps == b.fps
  assert a.frames == b.frames
  assert (a.start_us, a.end_us) == (b.start_us, b.end_us)
  assert a.label_index == b.label_index and a.label_string == b.label_string


def test_numpy_round_trip():
  clip = make_clip(3)
  back = schema.parse(schema.serialize(clip))
  assert_same(clip, back)
  # Unlabelled, frameless, empty audio is still a valid record.
  empty = schema.Clip("e", np.zeros([0], np.float32), 8000, [], 5.0, 0, 0)
  assert_same(empty, schema.parse(schema.serialize(empty)))


def test_serialize_and_parse_never_import_tensorflow_or_jax():
  code = ("import sys, numpy as np; from data_pipeline import schema; "
          "c = schema.Clip('x', np.ones(5, np.float32), 16000, [b'j'], 10.0, 0, 1); "
          "assert schema.parse(schema.serialize(c)).frames == [b'j']; "
          "bad = [m for m in ('tensorflow', 'jax', 'avcl') if m in sys.modules]; "
          "assert not bad, bad")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_tensorflow_reads_our_bytes_and_parse_tf_matches():
  tf = tf_cpu.import_tf()
  from tensorflow.core.example import example_pb2
  clip = make_clip(1)
  s = schema.serialize(clip)
  ex = example_pb2.SequenceExample.FromString(s)
  ctx = ex.context.feature
  assert ctx["video_id"].bytes_list.value[0] == b"dir/vid-1.mp4"
  assert ctx["clip/start/timestamp"].int64_list.value[0] == 1_000_000
  assert ctx["audio/sample_rate"].int64_list.value[0] == 16000
  assert ctx["avcl/format_version"].int64_list.value[0] == schema.FORMAT_VERSION
  assert len(ex.feature_lists.feature_list["image/encoded"].feature) == 3
  out = schema.parse_tf(tf.constant(s))
  np.testing.assert_array_equal(out["audio"].numpy(), clip.audio)
  assert [f for f in out["frames_jpeg"].numpy()] == clip.frames
  assert out["label_index"].numpy().tolist() == clip.label_index
  assert out["sample_rate"].numpy() == 16000 and out["fps"].numpy() == np.float32(10.0)
  assert out["start_us"].numpy() == clip.start_us and out["end_us"].numpy() == clip.end_us
  assert out["video_id"].numpy() == b"dir/vid-1.mp4"


def test_chunked_dmvr_waveform_and_missing_version_read():
  """A DMVR-style record written by TF (waveform in several features, no version) parses the same."""
  tf = tf_cpu.import_tf()
  audio = np.arange(10, dtype=np.float32) / 10
  ex = tf.train.SequenceExample()
  ex.context.feature["video_id"].bytes_list.value.append(b"ext")
  ex.context.feature["audio/sample_rate"].int64_list.value.append(16000)
  wl = ex.feature_lists.feature_list["WAVEFORM/feature/floats"]
  wl.feature.add().float_list.value.extend(audio[:4])
  wl.feature.add().float_list.value.extend(audio[4:])
  s = ex.SerializeToString()
  np.testing.assert_array_equal(schema.parse(s).audio, audio)
  np.testing.assert_array_equal(schema.parse_tf(tf.constant(s))["audio"].numpy(), audio)
  assert schema.parse_tf(tf.constant(s))["format_version"].numpy() == 0


def test_newer_format_version_is_rejected():
  tf = tf_cpu.import_tf()
  ex = schema.SequenceExample.FromString(schema.serialize(make_clip()))
  ex.context.feature["avcl/format_version"].int64_list.value[0] = schema.FORMAT_VERSION + 1
  s = ex.SerializeToString()
  with pytest.raises(ValueError, match="newer"):
    schema.parse(s)
  with pytest.raises(tf.errors.InvalidArgumentError, match="newer"):
    schema.parse_tf(tf.constant(s))


def test_bad_clip_is_an_error():
  clip = make_clip()
  clip.audio = np.zeros([2, 10], np.float32)
  with pytest.raises(ValueError, match="mono"):
    schema.serialize(clip)
  clip = make_clip()
  clip.audio[3] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    schema.serialize(clip)


def test_write_and_list_shards(tmp_path):
  tf = tf_cpu.import_tf()
  clips = [make_clip(i) for i in range(7)]
  d = str(tmp_path)
  assert schema.write_shards(iter(clips), d, "train", 3) == 7
  paths = schema.list_shards(d, "train")
  assert [os.path.basename(p) for p in paths] == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
  assert [schema.count_records(p) for p in paths] == [3, 2, 2]
  back = sorted(schema.read_clips(paths), key=lambda c: c.start_us)
  for a, b in zip(clips, back):
    assert_same(a, b)
  # TensorFlow reads the same records (CRCs verified by TF).
  tf_records = [r.numpy() for r in tf.data.TFRecordDataset(paths)]
  assert tf_records == [r for p in paths for r in schema.iter_records(p)]
  # Rewriting with another shard count replaces the split; other splits are untouched.
  schema.write_shards(clips[:2], d, "test", 1)
  schema.write_shards(clips[:4], d, "train", 2)
  assert len(schema.list_shards(d, "train")) == 2
  assert len(schema.list_shards(d, "test")) == 1
  assert not [f for f in os.listdir(d) if ".tmp" in f]
  # Missing / incomplete splits are errors naming the split.
  with pytest.raises(FileNotFoundError, match="validation"):
    schema.list_shards(d, "validation")
  os.remove(os.path.join(d, "train-00001-of-00002.tfrecord"))
  with pytest.raises(FileNotFoundError, match=r"incomplete.*\[1\]"):
    schema.list_shards(d, "train")


def test_truncated_file_is_an_error(tmp_path):
  path = str(tmp_path / "x-00000-of-00001.tfrecord")
  schema.write_records(path, [schema.serialize(make_clip(i)) for i in range(2)])
  data = open(path, "rb").read()
  open(path, "wb").write(data[:-10])
  with pytest.raises(ValueError, match="truncated"):
    schema.count_records(path)
  with pytest.raises(ValueError, match="truncated"):
    list(schema.iter_records(path))
