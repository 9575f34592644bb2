"""The embedded world: layout and JSON schema, labels, disjoint speakers/programs, audio and frames, audio-
visual synchrony, determinism, speed. One tiny world (--clips 40, ~140 clips) is generated per module."""
import io
import json
import os
import re
import time

import numpy as np
import pytest
from PIL import Image

from data_pipeline import schema
from data_pipeline.world import generator
from data_pipeline.world.synth import acoustics, events, music, speech

TINY_CLIPS = 40
TASK_JSON_KEYS = {"name", "metric", "multi_label", "num_classes", "class_names", "counts"}
SPLIT_DIRS = [("pretrain", "train")] + [(f"tasks/{t}", s) for t in generator.TASKS for s in generator.SPLITS]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("world"))
  start = time.time()
  info = generator.generate(root, clips=TINY_CLIPS, seed=3, workers=2, progress=False)
  seconds = time.time() - start
  clips = {f"{d}/{s}": list(schema.read_clips(schema.list_shards(os.path.join(root, d), s)))
           for d, s in SPLIT_DIRS}
  return {"root": root, "info": info, "seconds": seconds, "clips": clips}


def _sources(video_id: str) -> list[str]:
  return video_id.split(":", 1)[1].split(";")


def _speakers(clips) -> set[tuple[str, str]]:
  """(voice, variant) of every speaker heard in `clips`, read from their video_ids."""
  out = set()
  for c in clips:
    for s in _sources(c.video_id):
      m = re.match(r"(speech|word)\[([^+\]]+)\+([^/\]]+)/", s)
      if m:
        out.add((m[2], m[3]))
  return out


def _task(root, task):
  with open(os.path.join(root, "tasks", task, "task.json")) as f:
    return json.load(f)


def names_of(root, task):
  return _task(root, task)["class_names"]


def test_layout_world_json_and_task_json(world):
  root = world["root"]
  with open(os.path.join(root, "world.json")) as f:
    info = json.load(f)
  assert info == world["info"]
  assert info["seed"] == 3 and info["clips"] == TINY_CLIPS
  assert info["generator_version"] == generator.GENERATOR_VERSION
  assert not os.path.exists(os.path.join(root, generator.GENERATING_MARKER))  # Removed once complete.
  assert (info["sample_rate"], info["fps"], info["frame_size"], info["clip_seconds"]) == (16000, 10.0, 64, 3.0)
  assert info["counts"]["pretrain/train"] == TINY_CLIPS
  assert info["total_clips"] == sum(info["counts"].values())
  for key, clips in world["clips"].items():
    assert info["counts"][key] == len(clips) > 0, key
  # Shard names per design.md; counts in task.json match the records on disk.
  for split_dir, split in SPLIT_DIRS:
    paths = schema.list_shards(os.path.join(root, split_dir), split)
    n = sum(schema.count_records(p) for p in paths)
    for p in paths:
      assert re.fullmatch(rf"{split}-\d{{5}}-of-\d{{5}}\.tfrecord", os.path.basename(p))
    if split_dir.startswith("tasks/"):
      assert _task(root, split_dir.split("/")[1])["counts"][split] == n
  assert len(schema.list_shards(os.path.join(root, "pretrain"), "train")) == generator.MIN_PRETRAIN_SHARDS
  for task in generator.TASKS:
    t = _task(root, task)
    assert set(t) == TASK_JSON_KEYS
    assert t["name"] == task
    assert t["multi_label"] == (task == "sound_events")
    assert t["metric"] == ("mAP" if task == "sound_events" else "accuracy")
    assert t["num_classes"] == len(t["class_names"]) == len(set(t["class_names"])) >= 2
    assert set(t["counts"]) == set(generator.SPLITS)
  assert _task(root, "keyword")["class_names"] == list(speech.KEYWORDS) + ["_unknown_"]
  assert _task(root, "instrument")["class_names"] == sorted(music.FAMILY_PROGRAMS)
  assert len(music.FAMILIES) == 11  # NSynth's families.
  assert _task(root, "language")["num_classes"] == len(speech.TASK_LANGUAGES)
  assert _task(root, "speaker")["num_classes"] == generator.SPEAKER_TASK_SPEAKERS


def test_labels_match_what_sounds(world):
  root, clips = world["root"], world["clips"]
  for task in generator.TASKS:
    names = _task(root, task)["class_names"]
    for split in generator.SPLITS:
      for c in clips[f"tasks/{task}/{split}"]:
        assert c.label_string == [names[i] for i in c.label_index], c.video_id
        assert c.video_id.startswith(f"{task}/{split}/")
        if task == "sound_events":
          assert 1 <= len(c.label_index) <= 3 and c.label_index == sorted(set(c.label_index))
          assert len(_sources(c.video_id)) == len(c.label_index)  # One class per source.
        else:
          assert len(c.label_index) == 1 and 0 <= c.label_index[0] < len(names)
      labels = [c.label_index[0] for c in clips[f"tasks/{task}/{split}"]] if task != "sound_events" else []
      if labels and split == "train":
        assert sorted(set(labels)) == list(range(len(names)))  # Every class in train.
  for c in clips["tasks/keyword/train"] + clips["tasks/keyword/test"]:
    said = _sources(c.video_id)[0].split("=", 1)[1]
    label = c.label_string[0]
    assert said == label if label != speech.UNKNOWN_KEYWORD else said in speech.UNKNOWN_WORDS
  for c in clips["tasks/instrument/test"]:
    program = int(re.match(r"program\[(\d+)\]", _sources(c.video_id)[0])[1])
    assert music.FAMILY_OF_PROGRAM[program] == c.label_string[0]
  for c in clips["tasks/language/train"]:
    voice = re.match(r"speech\[([^+]+)\+", c.video_id.split(":", 1)[1])[1]
    assert voice in speech.LANGUAGE_BY_CODE[c.label_string[0]].voices
  english = speech.LANGUAGE_BY_CODE["en"].voices
  for c in clips["tasks/speaker/validation"]:
    assert c.video_id.split(":", 1)[1].startswith(f"speech[{c.label_string[0]}]")
  assert all(name.split("+")[0] in english for name in names_of(root, "speaker"))
  for c in clips["pretrain/train"]:
    assert all(events.SOUND_EVENT_CLASSES[i] == s for i, s in zip(c.label_index, c.label_string))
    if any(s.startswith(("speech[", "word[")) for s in _sources(c.video_id)):
      assert "speech" in c.label_string


def test_disjoint_speakers_programs_and_splits(world):
  clips, info = world["clips"], world["info"]
  pools = {name: {tuple(n.split("/")[0].split("+")) for n in names} for name, names in info["speakers"].items()}
  pretrain_pool = pools["pretrain"]
  heard_pretrain = _speakers(clips["pretrain/train"])
  assert heard_pretrain and heard_pretrain <= pretrain_pool
  for task in ("keyword", "language"):
    heard = {s: _speakers(clips[f"tasks/{task}/{s}"]) for s in generator.SPLITS}
    for split in generator.SPLITS:
      assert heard[split] and not heard[split] & pretrain_pool, (task, split)
      assert heard[split] <= pools[f"{task}/{split}"]
    assert not heard["train"] & heard["validation"]
    assert not heard["train"] & heard["test"]
    assert not heard["validation"] & heard["test"]
  speaker_task = set().union(*(_speakers(clips[f"tasks/speaker/{s}"]) for s in generator.SPLITS))
  assert not speaker_task & pretrain_pool
  # Speaker identification: test speakers are among the train speakers (same classes).
  assert _speakers(clips["tasks/speaker/test"]) <= _speakers(clips["tasks/speaker/train"])
  # Every pool pair is disjoint in (voice, variant), not only in full speaker settings.
  names = sorted(pools)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert not pools[a] & pools[b], (a, b)
  # Instrument: GM programs of the splits are disjoint (NSynth-like held-out instruments).
  programs = {s: {int(re.match(r"program\[(\d+)\]", _sources(c.video_id)[0])[1])
                  for c in clips[f"tasks/instrument/{s}"]} for s in generator.SPLITS}
  assert not programs["train"] & programs["test"] and not programs["train"] & programs["validation"]
  assert not programs["validation"] & programs["test"]
  # No clip appears twice anywhere.
  ids = [c.video_id.split(":")[0] for cs in clips.values() for c in cs]
  assert len(ids) == len(set(ids))
  audio_hashes = {hash(c.audio.tobytes()) for cs in clips.values() for c in cs}
  assert len(audio_hashes) == len(ids)


def test_audio_and_frames(world):
  for key, clips in world["clips"].items():
    for c in clips[:6]:
      assert c.sample_rate == 16000 and c.fps == 10.0
      assert c.audio.dtype == np.float32 and c.audio.shape == (48000,)
      assert np.all(np.isfinite(c.audio)) and np.abs(c.audio).max() <= 1.0
      assert acoustics.rms(c.audio) > 1e-3, key  # Not silent.
      assert (c.start_us, c.end_us) == (0, 3_000_000)
      assert len(c.frames) == 30
      for jpeg in c.frames[::7]:
        img = Image.open(io.BytesIO(jpeg))
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64)


def _frame_diff_vs_envelope_change(clips, shift=0):
  """Correlation over all frame transitions of (mean |frame_t - frame_t-1|, per clip normalised) with
  |change of the recorded audio's RMS envelope| (shifted by `shift` frames as a control)."""
  diffs, changes = [], []
  for c in clips:
    frames = np.stack([np.asarray(Image.open(io.BytesIO(f)), np.float64) for f in c.frames])
    d = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2, 3))
    # Independent reference envelope: numpy RMS over each 100 ms frame interval.
    env = np.sqrt((c.audio.astype(np.float64).reshape(len(c.frames), -1) ** 2).mean(axis=1))
    change = np.abs(np.diff(env / env.max()))
    diffs.append(d / d.mean())
    changes.append(np.roll(change, shift))
  return np.corrcoef(np.concatenate(diffs), np.concatenate(changes))[0, 1]


def test_visual_changes_coincide_with_sound_onsets(world):
  for key in ("pretrain/train", "tasks/keyword/train", "tasks/sound_events/train"):
    clips = world["clips"][key]
    aligned = _frame_diff_vs_envelope_change(clips)
    shifted = _frame_diff_vs_envelope_change(clips, shift=5)
    assert aligned > 0.5, (key, aligned)
    assert aligned > shifted + 0.4, (key, aligned, shifted)


def test_deterministic_from_seed_and_independent_of_workers(world):
  # Re-render some clips of every split in this process (workers=1), in reverse order: the bytes equal the
  # records the 2-worker run wrote.
  plan = generator.plan_world(3, TINY_CLIPS)
  assert plan.specs == generator.plan_world(3, TINY_CLIPS).specs
  picked = [s for s in plan.specs if s.index in (0, 3)][::-1]
  stored = {}  # Raw bytes as the worker processes serialised them.
  for split_dir, split in SPLIT_DIRS:
    for path in schema.list_shards(os.path.join(world["root"], split_dir), split):
      for record in schema.iter_records(path):
        stored[schema.parse(record).video_id.split(":")[0]] = record
  for spec in picked:
    assert generator.render_clip((spec, 3)) == stored[spec.key], spec.key
  other = generator.plan_world(4, TINY_CLIPS)
  assert other.specs != plan.specs
  assert generator.render_clip((plan.specs[0], 4)) != generator.render_clip((plan.specs[0], 3))


def test_tiny_world_is_fast(world):
  # Spawning workers and importing TensorFlow dominate a tiny world; rendering is tens of ms per clip.
  assert world["seconds"] < 120, world["seconds"]
  plan = generator.plan_world(5, 8)
  start = time.time()
  for spec in plan.specs[:12]:
    generator.render_clip((spec, 5))
  per_clip = (time.time() - start) / 12
  assert per_clip < 0.5, per_clip


def test_split_sizes_scale_with_clips():
  assert generator.split_sizes(1600) == {"train": 200, "validation": 80, "test": 120}
  assert generator.split_sizes(16000)["train"] == 2000
  assert generator.split_sizes(10, num_classes=20)["train"] == 20
  plan = generator.plan_world(0, 200)
  assert sum(s.split_dir == "pretrain" for s in plan.specs) == 200


def test_task_clips_holds_the_tasks_fixed_while_pretraining_grows():
  """A world of 4N pretraining clips with task_clips=N has the N-clip world's tasks, clip for clip (same
  specs, hence the same rendered bytes), and the N-clip world's pretraining clips as its first N."""
  small, big = generator.plan_world(0, 200), generator.plan_world(0, 800, task_clips=200)
  tasks = [s for s in small.specs if s.split_dir != "pretrain"]
  assert tasks and tasks == [s for s in big.specs if s.split_dir != "pretrain"]
  pre_small = [s for s in small.specs if s.split_dir == "pretrain"]
  pre_big = [s for s in big.specs if s.split_dir == "pretrain"]
  assert len(pre_big) == 800 and pre_big[:200] == pre_small
  assert big.classes == small.classes
  # Without task_clips the task splits grow with the world (the default behaviour).
  grown = generator.plan_world(0, 800)
  assert sum(s.split_dir != "pretrain" for s in grown.specs) > len(tasks)
  with pytest.raises(ValueError, match="task_clips"):
    generator.plan_world(0, 8, task_clips=-1)


def test_cli_help_and_bad_arguments(capsys, tmp_path):
  with pytest.raises(SystemExit) as e:
    generator.main(["--help"])
  assert e.value.code == 0
  assert "--clips" in capsys.readouterr().out
  for bad, field in ((["--clips", "0"], "--clips"), (["--seed", "-1"], "--seed"),
                     (["--workers", "0"], "--workers"), (["--task-clips", "-1"], "--task-clips")):
    with pytest.raises(SystemExit) as e:
      generator.main(["--output", str(tmp_path)] + bad)
    assert e.value.code == 2
    assert field in capsys.readouterr().err
  with pytest.raises(ValueError, match="clips"):
    generator.plan_world(0, 0)


def test_input_pipeline_reads_the_world_in_design_shapes(world):
  from data_pipeline import input as input_lib
  root = world["root"]
  train = input_lib.make_dataset(schema.list_shards(os.path.join(root, "pretrain"), "train"), batch_size=4,
                                 train=True, clip_seconds=2.0, sample_rate=16000, fps=5.0, frame_size=32)
  batch = next(iter(train.as_numpy_iterator()))
  assert batch["audio"].shape == (4, 32000) and batch["audio"].dtype == np.float32
  assert batch["frames"].shape == (4, 10, 32, 32, 3) and batch["frames"].dtype == np.uint8
  for task in ("keyword", "sound_events"):
    info = _task(root, task)
    ds = input_lib.make_dataset(schema.list_shards(os.path.join(root, "tasks", task), "test"), batch_size=3,
                                train=False, clip_seconds=3.0, sample_rate=16000, fps=10.0, frame_size=64,
                                num_classes=info["num_classes"], multi_label=info["multi_label"])
    batches = list(ds.as_numpy_iterator())
    assert sum(int(b["mask"].sum()) for b in batches) == info["counts"]["test"]
    labels = batches[0]["label"]
    if info["multi_label"]:
      assert labels.shape == (3, info["num_classes"]) and set(np.unique(labels)) <= {0.0, 1.0}
    else:
      assert labels.shape == (3,) and labels.dtype == np.int32
