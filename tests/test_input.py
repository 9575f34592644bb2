"""tf.data input: per-process sharding, padded deterministic eval, labels, aligned crops, augmentation."""
import io

import numpy as np
import pytest
from PIL import Image

from data_pipeline import ingest, schema, tf_cpu
from data_pipeline import input as inp
from tests.video_fixtures import flash_click_video  # noqa: F401  (fixture)

SR = 16000


def jpeg(img, quality=95):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def id_clip(i, seconds=1.0, fps=10.0, labels=(), size=16):
  """A clip whose audio is the constant i / 1000 and whose frames have gray level i (so batches name it)."""
  n = int(round(seconds * SR))
  frame = jpeg(np.full([size, size, 3], i % 256, np.uint8))
  return schema.Clip(video_id=f"clip{i}", audio=np.full([n], i / 1000, np.float32), sample_rate=SR,
                     frames=[frame] * int(round(seconds * fps)), fps=fps, start_us=0,
                     end_us=int(seconds * 1e6), label_index=list(labels), label_string=[str(l) for l in labels])


def ids_of(batch):
  return [int(round(a * 1000)) for a, m in zip(batch["audio"][:, 0], batch["mask"]) if m]


KW = dict(clip_seconds=0.5, sample_rate=SR, fps=5.0, frame_size=8)


@pytest.fixture(scope="module")
def shard_sets(tmp_path_factory):
  """23 clips written as 5 shards (more files than processes) and as 2 shards (fewer than 3 processes)."""
  out = {}
  for n in (2, 5):
    d = str(tmp_path_factory.mktemp(f"shards{n}"))
    schema.write_shards([id_clip(i) for i in range(23)], d, "test", n)
    out[n] = schema.list_shards(d, "test")
  return out


@pytest.mark.parametrize("num_files", [2, 5])  # 2 files < 3 processes: records are sharded instead.
@pytest.mark.parametrize("process_count", [1, 2, 3])
def test_eval_covers_every_record_once_across_processes(shard_sets, num_files, process_count):
  files = shard_sets[num_files]
  seen, num_batches = [], set()
  for p in range(process_count):
    ds = inp.make_dataset(files, batch_size=4, train=False, process_index=p, process_count=process_count, **KW)
    batches = list(ds.as_numpy_iterator())
    num_batches.add(len(batches))
    assert len(ds) == len(batches)
    for b in batches:
      seen += ids_of(b)
  assert sorted(seen) == list(range(23))
  # Every process runs the same number of eval steps (multi-host loops stay in step).
  assert num_batches == {inp.num_eval_batches(files, 4, process_count)}


@pytest.mark.parametrize("num_files", [2, 5])
def test_train_shards_are_disjoint_and_complete(shard_sets, num_files):
  files = shard_sets[num_files]
  shares = []
  for p in range(3):
    ds = inp.make_dataset(files, batch_size=5, train=True, process_index=p, process_count=3, seed=1,
                          shuffle_buffer=64, **KW)
    share = set()
    for b in ds.take(12).as_numpy_iterator():  # 60 samples: several epochs of an 8-record share.
      assert b["mask"].all() and b["audio"].shape == (5, 8000)
      share |= set(ids_of(b))
    shares.append(share)
  assert sum(len(s) for s in shares) == 23 and set().union(*shares) == set(range(23))


def test_eval_is_deterministic_padded_and_masked(shard_sets):
  files = shard_sets[5]
  ds = inp.make_dataset(files, batch_size=10, train=False, **KW)
  a, b = list(ds.as_numpy_iterator()), list(ds.as_numpy_iterator())
  assert len(a) == 3
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # File order (round-robin shards: file j holds clips j, j + 5, ...).
  assert sum((ids_of(x) for x in a), []) == [i for j in range(5) for i in range(j, 23, 5)]
  last = a[-1]
  assert last["mask"].tolist() == [True] * 3 + [False] * 7
  assert not last["audio"][3:].any() and not last["frames"][3:].any()
  assert a[0]["audio"].dtype == np.float32 and a[0]["frames"].dtype == np.uint8
  assert a[0]["frames"].shape == (10, 2, 8, 8, 3) and a[0]["mask"].dtype == bool


def test_labels_single_and_multi_hot(tmp_path):
  d = str(tmp_path)
  schema.write_shards([id_clip(0, labels=[2]), id_clip(1, labels=[0])], d, "single", 1)
  schema.write_shards([id_clip(0, labels=[0, 3]), id_clip(1, labels=[])], d, "multi", 1)
  b = next(inp.make_dataset(schema.list_shards(d, "single"), batch_size=2, train=False, num_classes=4,
                            **KW).as_numpy_iterator())
  assert b["label"].dtype == np.int32 and b["label"].tolist() == [2, 0]
  b = next(inp.make_dataset(schema.list_shards(d, "multi"), batch_size=2, train=False, num_classes=4,
                            multi_label=True, **KW).as_numpy_iterator())
  assert b["label"].dtype == np.float32
  np.testing.assert_array_equal(b["label"], [[1, 0, 0, 1], [0, 0, 0, 0]])
  tf = tf_cpu.import_tf()
  with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes=2"):
    list(inp.make_dataset(schema.list_shards(d, "single"), batch_size=2, train=False, num_classes=2, **KW))
  with pytest.raises(tf.errors.InvalidArgumentError, match="single-label"):
    list(inp.make_dataset(schema.list_shards(d, "multi"), batch_size=2, train=False, num_classes=4, **KW))


def test_bad_arguments_and_sample_rate_mismatch(shard_sets):
  with pytest.raises(ValueError, match="process_index=3"):
    inp.make_dataset(shard_sets[2], batch_size=2, train=False, process_index=3, process_count=3, **KW)
  with pytest.raises(ValueError, match="frame_size"):
    inp.make_dataset(shard_sets[2], batch_size=2, train=False, **{**KW, "frame_size": 0})
  with pytest.raises(ValueError, match="no training records"):
    inp.make_dataset(shard_sets[2][:1], batch_size=2, train=True, process_index=12, process_count=13, **KW)
  tf = tf_cpu.import_tf()
  with pytest.raises(tf.errors.InvalidArgumentError, match="sample_rate=8000"):
    list(inp.make_dataset(shard_sets[2], batch_size=2, train=False, **{**KW, "sample_rate": 8000}))


def test_short_clips_are_padded(tmp_path):
  """A 0.3 s clip in a 0.5 s crop: audio zero-padded at the end, video holds its last frame."""
  d = str(tmp_path)
  clip = id_clip(7, seconds=0.3)
  clip.frames = [jpeg(np.full([16, 16, 3], g, np.uint8)) for g in (40, 120, 200)]
  schema.write_shards([clip], d, "x", 1)
  b = next(inp.make_dataset(schema.list_shards(d, "x"), batch_size=1, train=True, shuffle_buffer=1,
                            **{**KW, "fps": 10.0}).as_numpy_iterator())
  np.testing.assert_allclose(b["audio"][0, :4800], 0.007)
  assert not b["audio"][0, 4800:].any()
  np.testing.assert_allclose(b["frames"][0].mean(axis=(1, 2, 3)), [40, 120, 200, 200, 200], atol=3)


def test_frames_subsampled_on_the_stored_grid(tmp_path):
  """Stored 10 fps, frame k has gray level 10 k; an eval crop at 5 fps keeps every second frame."""
  d = str(tmp_path)
  clip = id_clip(0, seconds=2.0)
  clip.frames = [jpeg(np.full([16, 16, 3], 10 * k, np.uint8)) for k in range(20)]
  schema.write_shards([clip], d, "x", 1)
  b = next(inp.make_dataset(schema.list_shards(d, "x"), batch_size=1, train=False,
                            **{**KW, "clip_seconds": 1.0}).as_numpy_iterator())
  # Centre crop: 1 s spare -> starts at stored frame 5 (0.5 s): frames 5, 7, 9, 11, 13.
  np.testing.assert_allclose(b["frames"][0].mean(axis=(1, 2, 3)), [50, 70, 90, 110, 130], atol=3)


def test_flip_mirrors_whole_clips(tmp_path):
  d = str(tmp_path)
  img = np.zeros([16, 16, 3], np.uint8)
  img[:, :4] = 255  # Bright left edge.
  clips = []
  for i in range(16):
    c = id_clip(i)
    c.frames = [jpeg(img)] * 10
    clips.append(c)
  schema.write_shards(clips, d, "x", 1)
  b = next(inp.make_dataset(schema.list_shards(d, "x"), batch_size=16, train=True, video_flip=True,
                            **KW).as_numpy_iterator())
  left = b["frames"][..., :2, :].mean(axis=(2, 3, 4))  # [b, t]
  right = b["frames"][..., -2:, :].mean(axis=(2, 3, 4))
  flipped = right[:, 0] > left[:, 0]
  # Each clip is flipped as a whole (every frame the same way), and both outcomes occur.
  assert np.all((right > left) == flipped[:, None])
  assert 0 < flipped.sum() < 16


def test_random_crops_keep_flash_and_click_aligned(flash_click_video, tmp_path):
  """End to end: video file -> ingest -> random aligned crops; clicks and flashes coincide within a frame."""
  clip = ingest.convert_video(flash_click_video, None, None, [], ingest.Options(size=16))
  d = str(tmp_path)
  schema.write_shards([clip], d, "train", 1)
  fps = 5.0
  ds = inp.make_dataset(schema.list_shards(d, "train"), batch_size=16, train=True, clip_seconds=1.5,
                        sample_rate=SR, fps=fps, frame_size=8, video_random_crop=True, video_flip=True,
                        shuffle_buffer=1, seed=3)
  checked, starts = 0, set()
  for b in ds.take(6).as_numpy_iterator():
    for audio, frames in zip(b["audio"], b["frames"]):
      loud = np.flatnonzero(np.abs(audio) > 0.3)
      clicks = [i / SR for k, i in enumerate(loud) if k == 0 or i - loud[k - 1] > 0.3 * SR]
      bright = frames.mean(axis=(1, 2, 3)) > 128
      onsets = np.flatnonzero(bright & ~np.r_[False, bright[:-1]]) / fps
      starts.add(tuple(onsets))
      for t_click in clicks:
        if t_click < 0.02 or t_click > 1.5 - 0.3:  # Flash may have started before the crop / end after it.
          continue
        assert onsets.size, (t_click, bright)
        delay = onsets[np.argmin(np.abs(onsets - t_click))] - t_click
        # The first frame at or after the click shows the flash: never before it, less than a frame after.
        assert -0.01 < delay < 1 / fps + 0.01, (t_click, onsets)
        checked += 1
  assert checked >= 40 and len(starts) > 3  # Many different crops were checked.


def test_eval_resize_matches_pil_reference(tmp_path):
  """Non-square stored frames: centre square, then antialiased bilinear (PIL's BILINEAR as reference)."""
  d = str(tmp_path)
  rng = np.random.default_rng(0)
  img = (rng.uniform(0, 1, [24, 40, 3]) ** 2 * 255).astype(np.uint8)
  clip = id_clip(0, seconds=1.0)
  clip.frames = [jpeg(img, quality=100)] * 10
  schema.write_shards([clip], d, "x", 1)
  b = next(inp.make_dataset(schema.list_shards(d, "x"), batch_size=1, train=False,
                            **KW).as_numpy_iterator())
  stored = np.asarray(Image.open(io.BytesIO(clip.frames[0])))
  square = Image.fromarray(stored[:, 8:32])
  ref = np.asarray(square.resize((8, 8), Image.BILINEAR), dtype=float)
  got = b["frames"][0, 0].astype(float)
  # (Measured: mean 1.2, max 7; a stretched frame would differ by ~13 on average, nearest-neighbour by ~36.)
  assert np.abs(got - ref).mean() < 2 and np.abs(got - ref).max() < 10


def test_training_stream_is_reproducible_from_its_seed(shard_sets):
  def first_batches(seed):
    ds = inp.make_dataset(shard_sets[5], batch_size=6, train=True, seed=seed, shuffle_buffer=32,
                          video_random_crop=True, video_flip=True, **KW)
    return [b for b in ds.take(5).as_numpy_iterator()]
  a, b, c = first_batches(1), first_batches(1), first_batches(2)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert [ids_of(x) for x in a] != [ids_of(x) for x in c]


@pytest.mark.parametrize("num_files,process_count", [(5, 1), (5, 2), (2, 3)])  # (2, 3): records sharded.
def test_skip_examples_continues_the_stream_where_it_stopped(shard_sets, num_files, process_count):
  """A resumed run skips the examples it consumed: batch k of the skipped stream is batch k + skipped of the
  uninterrupted stream (every process, both sharding modes), including its random crop and flip."""
  def batches(process_index, skip, n):
    ds = inp.make_dataset(shard_sets[num_files], batch_size=3, train=True, seed=7, shuffle_buffer=32,
                          video_random_crop=True, video_flip=True, process_index=process_index,
                          process_count=process_count, skip_examples=skip, **KW)
    return list(ds.take(n).as_numpy_iterator())
  for p in range(process_count):
    full = batches(p, 0, 12)  # 36 examples per process: past the end of the first epoch of its share.
    resumed = batches(p, 9 * 3, 3)
    for k, (x, y) in enumerate(zip(full[9:], resumed)):
      for key in x:
        np.testing.assert_array_equal(x[key], y[key], err_msg=f"process {p}, batch {9 + k}, {key}")
  with pytest.raises(ValueError, match="skip_examples=5 is out of range"):
    inp.make_dataset(shard_sets[5], batch_size=3, train=False, skip_examples=5, **KW)


def test_largest_seed_reaches_tf_data_without_overflow(shard_sets):
  """config_validation.MAX_SEED passes the per-process seed arithmetic (seed * 1_000_003 + process) in int64."""
  from avcl import config_validation  # pylint: disable=g-import-not-at-top
  ds = inp.make_dataset(shard_sets[5], batch_size=3, train=True, seed=config_validation.MAX_SEED,
                        process_index=1, process_count=2, video_random_crop=True, **KW)
  assert next(ds.as_numpy_iterator())["audio"].shape == (3, 8000)
