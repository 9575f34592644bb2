"""avcl.evaluate.tasks: embedded-world, TFDS (mock_data) and DMVR AudioSet readers."""
import json
import os

import numpy as np
import pytest

from avcl.evaluate import tasks
from data_pipeline import schema, tf_cpu


def _clip(vid, labels, rate=8000, seconds=0.5, seed=0):
  audio = np.random.default_rng(seed).uniform(-0.5, 0.5, int(rate * seconds)).astype(np.float32)
  return schema.Clip(video_id=vid, audio=audio, sample_rate=rate, frames=[], fps=10.0, start_us=0,
                     end_us=int(seconds * 1e6), label_index=list(labels))


def write_task(root, name, multi_label, num_classes, counts, rate=8000):
  d = os.path.join(root, "tasks", name)
  rng = np.random.default_rng(0)
  for split, n in counts.items():
    clips = []
    for i in range(n):
      labels = sorted(set(rng.integers(0, num_classes, 2).tolist())) if multi_label \
          else [int(rng.integers(0, num_classes))]
      clips.append(_clip(f"{name}-{split}-{i}", labels, rate, seed=i))
    schema.write_shards(clips, d, split, 2)
  with open(os.path.join(d, "task.json"), "w") as f:
    json.dump({"name": name, "metric": "mAP" if multi_label else "accuracy", "multi_label": multi_label,
               "num_classes": num_classes, "class_names": [f"c{i}" for i in range(num_classes)],
               "counts": counts}, f)
  return d


def test_resample_keeps_frequency_and_duration():
  t = np.arange(48000) / 48000
  x = np.sin(2 * np.pi * 440 * t).astype(np.float32)
  y = tasks.resample(x, 48000, 16000)
  assert y.shape == (16000,) and y.dtype == np.float32
  ref = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
  np.testing.assert_allclose(y[200:-200], ref[200:-200], atol=1e-3)
  assert tasks.resample(x, 16000, 16000) is not None and np.array_equal(tasks.resample(x, 16000, 16000), x)


def test_embedded_task_reads_splits_and_resamples(tmp_path):
  write_task(str(tmp_path), "keyword", False, 4, {"train": 6, "validation": 3, "test": 4})
  task = tasks.get_task("keyword", sample_rate=16000, embedded_root=str(tmp_path))
  assert task.metric == "accuracy" and task.num_classes == 4 and not task.multi_label
  assert task.count("train") == 6
  test = list(task.examples("test"))
  assert len(test) == 4 and all(len(e.labels) == 1 for e in test)
  assert test[0].audio.shape == (8000,)  # 0.5 s at 16 kHz after resampling from 8 kHz.
  capped = tasks.get_task("keyword", sample_rate=16000, embedded_root=str(tmp_path), max_examples=2)
  assert len(list(capped.examples("train"))) == 2


def test_embedded_multilabel_and_missing(tmp_path):
  write_task(str(tmp_path), "sound_events", True, 5, {"train": 3, "validation": 2, "test": 2})
  task = tasks.get_task("sound_events", sample_rate=8000, embedded_root=str(tmp_path))
  assert task.metric == "mAP" and task.multi_label
  assert any(len(e.labels) == 2 for e in task.examples("train"))
  with pytest.raises(tasks.DatasetNotFoundError, match="'speaker'"):
    tasks.get_task("speaker", sample_rate=16000, embedded_root=str(tmp_path))
  with pytest.raises(ValueError, match="unknown task 'nope'"):
    tasks.get_task("nope", sample_rate=16000, embedded_root=str(tmp_path))


def test_single_label_task_rejects_multiple_labels(tmp_path):
  d = write_task(str(tmp_path), "keyword", False, 3, {"train": 2, "validation": 1, "test": 1})
  schema.write_shards([_clip("bad", [0, 1])], d, "test", 1)
  task = tasks.get_task("keyword", sample_rate=8000, embedded_root=str(tmp_path))
  with pytest.raises(ValueError, match="'bad'"):
    list(task.examples("test"))


@pytest.mark.parametrize("name,classes", [("speech_commands", 12), ("nsynth", 11), ("crema_d", 6)])
def test_tfds_task_with_mock_data(tmp_path, name, classes):
  tfds = tasks._tfds()
  with tfds.testing.mock_data(num_examples=3, data_dir=str(tmp_path)):
    task = tasks.get_task(name, sample_rate=8000, tfds_data_dir=str(tmp_path))
    assert task.num_classes == classes and task.metric == "accuracy"
    for split in tasks.SPLITS:
      exs = list(task.examples(split))
      assert len(exs) == 3
      for e in exs:
        assert e.audio.dtype == np.float32 and e.audio.ndim == 1
        assert np.all(np.isfinite(e.audio)) and e.audio.size > 0
        assert 0 <= e.labels[0] < classes


def test_tfds_int_audio_is_scaled_and_resampled(tmp_path):
  tfds = tasks._tfds()
  tf = tf_cpu.import_tf()

  def as_dataset(self, split, **kwargs):
    audio = np.full(16000, 16384, np.int16)
    return tf.data.Dataset.from_tensors({"audio": audio, "label": np.int64(3)})

  with tfds.testing.mock_data(as_dataset_fn=as_dataset, data_dir=str(tmp_path)):
    (ex,) = tasks.get_task("speech_commands", sample_rate=8000, tfds_data_dir=str(tmp_path)).examples("test")
  assert ex.audio.shape == (8000,) and ex.labels == (3,)
  np.testing.assert_allclose(ex.audio[100:-100], 0.5, atol=1e-3)


@pytest.mark.parametrize("name,hint", [("speech_commands", "tfds build speech_commands --data_dir"),
                                       ("voxceleb", "manual download")])
def test_missing_tfds_dataset_names_it_and_how_to_prepare(tmp_path, name, hint):
  with pytest.raises(tasks.DatasetNotFoundError) as e:
    tasks.get_task(name, sample_rate=16000, tfds_data_dir=str(tmp_path))
  assert repr(name) in str(e.value) and hint in str(e.value)


def test_audioset_dmvr_reader(tmp_path):
  rng = np.random.default_rng(0)
  def clips(prefix, n):
    return [_clip(f"{prefix}{i}", sorted(set(rng.integers(0, 527, 3).tolist())), rate=32000, seconds=0.25)
            for i in range(n)]
  schema.write_shards(clips("b", 60), str(tmp_path), "balanced_train", 2)
  schema.write_shards(clips("u", 20), str(tmp_path), "unbalanced_train", 1)
  schema.write_shards(clips("e", 7), str(tmp_path), "eval", 1)
  task = tasks.get_task("audioset", sample_rate=16000, audioset_dir=str(tmp_path))
  assert task.metric == "mAP" and task.num_classes == 527
  train = [e.key for e in task.examples("train")]
  val = [e.key for e in task.examples("validation")]
  test = list(task.examples("test"))
  assert len(train) + len(val) == 60 and 0 < len(val) < 20 and not set(train) & set(val)
  assert len(test) == 7 and test[0].audio.shape == (4000,)
  full = tasks.get_task("audioset_unbalanced", sample_rate=16000, audioset_dir=str(tmp_path))
  assert len(list(full.examples("train"))) + len(list(full.examples("validation"))) == 80
  with pytest.raises(tasks.DatasetNotFoundError, match="audioset_dir"):
    tasks.get_task("audioset", sample_rate=16000, audioset_dir="")
  with pytest.raises(tasks.DatasetNotFoundError, match="'balanced_train' not found"):
    tasks.get_task("audioset", sample_rate=16000, audioset_dir=str(tmp_path / "nothing"))
