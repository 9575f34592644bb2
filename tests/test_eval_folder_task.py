"""Folder tasks (`folder:PATH`): your own labelled recordings, in any format, split by group, bad files
skipped and counted, through the whole evaluation."""
import json

import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from avcl import models
from avcl.evaluate import runner, tasks
from tests.test_eval_runner import tiny_config

SR = 16000


def _sound(kind: str, seconds: float, rate: int, rng) -> np.ndarray:
  """Three classes a log-mel probe tells apart: a low tone, a high tone, and clicks (a drum-like pulse train)."""
  t = np.arange(int(seconds * rate)) / rate
  if kind == "low":
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(180, 260) * t)
  elif kind == "high":
    x = 0.3 * np.sin(2 * np.pi * rng.uniform(2500, 3500) * t)
  else:
    x = np.zeros_like(t)
    x[::rate // 8] = 0.9
    x = np.convolve(x, np.exp(-np.arange(200) / 20.0), mode="same")
  return (x + 0.01 * rng.normal(size=t.size)).astype(np.float32)


def make_folder(root, groups_per_class=5, files_per_group=2):
  """ROOT/<class>/<group>/<file>: wav at 44.1 kHz stereo, flac at 16 kHz, ogg at 22.05 kHz, plus a text file
  (ignored) and a corrupt .wav (skipped)."""
  rng = np.random.default_rng(0)
  formats = ((".wav", 44100, 2), (".flac", 16000, 1), (".ogg", 22050, 1))
  for kind in ("low", "high", "clicks"):
    for g in range(groups_per_class):
      d = root / kind / f"session{g}"
      d.mkdir(parents=True)
      for i in range(files_per_group):
        ext, rate, channels = formats[(g + i) % len(formats)]
        x = _sound(kind, rng.uniform(0.6, 1.5), rate, rng)
        sf.write(str(d / f"take{i}{ext}"), np.stack([x] * channels, -1) if channels > 1 else x, rate)
  (root / "low" / "README.txt").write_text("not audio")
  return root


def test_folder_task_splits_by_group_and_reads_any_format(tmp_path):
  root = make_folder(tmp_path / "rec")
  task = tasks.get_task(f"folder:{root}", sample_rate=SR)
  assert (task.name, task.num_classes, task.multi_label) == ("folder:rec", 3, False)
  assert task.class_names == ["clicks", "high", "low"]
  seen = {}
  for split in tasks.SPLITS:
    exs = list(task.examples(split))
    assert len(exs) == task.count(split)
    seen[split] = exs
    for ex in exs:
      assert ex.audio.dtype == np.float32 and ex.audio.ndim == 1
      assert ex.key.split("/")[-3] == task.class_names[ex.labels[0]]  # The label is the class folder.
  # 5 groups per class: 3 train, 1 validation, 1 test; the 2 files of a group stay together.
  assert [len(seen[s]) for s in tasks.SPLITS] == [3 * 6, 3 * 2, 3 * 2]
  groups = {s: {ex.key.rsplit("/", 1)[0] for ex in seen[s]} for s in tasks.SPLITS}
  assert not (groups["train"] & groups["validation"]) and not (groups["train"] & groups["test"])
  assert not (groups["validation"] & groups["test"])
  # Deterministic: the same split on a second look.
  again = tasks.get_task(f"folder:{root}/", sample_rate=SR)
  assert [ex.key for ex in again.examples("test")] == [ex.key for ex in seen["test"]]
  # 44.1 kHz stereo converted to 16 kHz mono, length kept.
  wav = next(ex for ex in seen["train"] + seen["validation"] + seen["test"] if ex.key.endswith(".wav"))
  info = sf.info(wav.key)
  assert abs(wav.audio.size - info.frames * SR / info.samplerate) <= 2


def test_folder_task_with_own_splits_and_bad_layouts(tmp_path):
  rng = np.random.default_rng(1)
  root = tmp_path / "own"
  for split, n in (("train", 2), ("validation", 1), ("test", 1)):
    for kind in ("low", "high"):
      (root / split / kind).mkdir(parents=True)
      for i in range(n):
        sf.write(str(root / split / kind / f"{i}.wav"), _sound(kind, 0.5, SR, rng), SR)
  task = tasks.folder_task(str(root), sample_rate=SR)
  assert [task.count(s) for s in tasks.SPLITS] == [4, 2, 2] and "own splits" in task.source

  with pytest.raises(tasks.DatasetNotFoundError, match="not a directory"):
    tasks.get_task(f"folder:{tmp_path / 'absent'}", sample_rate=SR)
  few = tmp_path / "few"
  for kind in ("low", "high"):
    (few / kind).mkdir(parents=True)
    for i in range(2):
      sf.write(str(few / kind / f"{i}.wav"), _sound(kind, 0.5, SR, rng), SR)
  with pytest.raises(ValueError, match=r"class 'high' has 2 group\(s\).*at least 3"):
    tasks.get_task(f"folder:{few}", sample_rate=SR)
  one = tmp_path / "one"
  (one / "low").mkdir(parents=True)
  with pytest.raises(ValueError, match="at least 2"):
    tasks.get_task(f"folder:{one}", sample_rate=SR)
  (root / "test" / "drums").mkdir()
  with pytest.raises(ValueError, match=r"test/ has classes with no train/ folder: \['drums'\]"):
    tasks.get_task(f"folder:{root}", sample_rate=SR)


def test_folder_task_through_evaluation_counts_skipped_files(tmp_path):
  root = make_folder(tmp_path / "rec")
  task = tasks.get_task(f"folder:{root}", sample_rate=SR)
  bad = next(ex.key for ex in task.examples("test"))
  with open(bad, "wb") as f:
    f.write(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk")  # A truncated header: no decoder reads it.
  c = tiny_config(tmp_path / "world")
  c.eval.baselines = ("logmel",)
  model = models.build_model(c.model, c.audio, rngs=nnx.Rngs(1))
  out = tmp_path / "eval"
  results = runner.evaluate_model(model, c, step=3, out_dir=str(out), tasks=[f"folder:{root}"], progress=False,
                                  print_table=False)
  t = results["tasks"]["folder:rec"]
  assert (t["metric"], t["n_train"], t["n_test"]) == ("accuracy", 18, 5)
  # Tones against clicks: pooled log-mel statistics separate them.
  assert t["scores"]["logmel"] >= 0.99
  details = json.load(open(out / "details.json"))["tasks"]["folder:rec"]
  assert list(details["skipped"]) == ["test"]
  assert list(details["skipped"]["test"]) == [bad]
  assert details["skipped"]["test"][bad].split(":")[0] in ("unreadable", "corrupt", "empty")
