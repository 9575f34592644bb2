"""Downstream tasks: where labelled audio comes from, split by split, at the model's sample rate.

Four sources, all read-only (nothing is ever downloaded here):
  * the embedded world's held-out tasks, `ROOT/tasks/<task>/{train,validation,test}-*.tfrecord` with
    `task.json` (layout in docs/design.md);
  * TFDS datasets already prepared on disk: `speech_commands` (keywords), `nsynth` (instrument family),
    `voxforge` (language), `voxceleb` (speaker, VoxCeleb1), `crema_d` (emotion);
  * your own labelled recordings in a folder, one subfolder per class (`folder:PATH`; `folder_task`), in
    any format `data_pipeline.audio_files` decodes: the check of an encoder on real speech, instruments or
    drums, whatever the synthetic world holds;
  * AudioSet as TFRecords of SequenceExamples in the DMVR convention (the same keys as avcl's own records;
    `clip/label/index` holds the 527-class indices): files `balanced_train*`, `unbalanced_train*` and
    `eval*` in one directory. Task `audioset` trains on the balanced set, `audioset_unbalanced` on the
    unbalanced one (plus balanced); both test on `eval`, and hold out 10% of training videos (by a hash
    of `video_id`) for validation.

A `Task` yields `Example`s (mono float32 audio in [-1, 1] at the requested rate, and label indices).
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy import signal

from data_pipeline import audio_files, paths, schema, tf_cpu

EMBEDDED_TASKS = ("keyword", "speaker", "language", "instrument", "sound_events")
SPLITS = ("train", "validation", "test")
FOLDER_PREFIX = "folder:"  # Task names `folder:PATH`: a folder of labelled recordings (folder_task).
# How a folder without train/validation/test subfolders is split, per class, by groups (folder_task).
FOLDER_SPLIT_FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}
AUDIOSET_CLASSES = 527
AUDIOSET_SUBSETS = ("balanced_train", "unbalanced_train", "eval")


class DatasetNotFoundError(FileNotFoundError):
  """A downstream dataset is not on disk; the message says how to prepare it."""


@dataclasses.dataclass(frozen=True)
class Example:
  audio: np.ndarray  # f32[samples] mono in [-1, 1] at the task's sample rate.
  labels: tuple[int, ...]  # Class indices (exactly one for single-label tasks).
  key: str = ""  # Source id, for error messages.


@dataclasses.dataclass
class Task:
  """A labelled downstream task. `examples(split)` streams one of "train", "validation", "test"."""
  name: str
  multi_label: bool
  num_classes: int
  class_names: Sequence[str]
  sample_rate: int
  source: str  # Where the data is read from (shown in reports and errors).
  read: Callable[[str], Iterator[Example]]
  max_examples: int = 0  # Per split; 0 reads everything.
  counts: dict[str, int] = dataclasses.field(default_factory=dict)  # Examples per split, where known.
  # Inputs left out because they could not be read, per split: {split: {path: "reason: detail"}} (filled
  # while `examples` runs; folder tasks only, whose users want a bad file skipped and counted).
  skipped: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

  @property
  def metric(self) -> str:
    return "mAP" if self.multi_label else "accuracy"

  def count(self, split: str) -> int | None:
    """Examples `examples(split)` will yield, where known in advance (for progress bars)."""
    n = self.counts.get(split)
    if n is None:
      return self.max_examples or None
    return min(n, self.max_examples) if self.max_examples else n

  def examples(self, split: str) -> Iterator[Example]:
    if split not in SPLITS:
      raise ValueError(f"task {self.name}: split must be one of {SPLITS}, got {split!r}")
    for i, ex in enumerate(self.read(split)):
      if self.max_examples and i >= self.max_examples:
        return
      if not self.multi_label and len(ex.labels) != 1:
        raise ValueError(f"task {self.name}: single-label example {ex.key!r} in split {split} has labels "
                         f"{list(ex.labels)}")
      if any(not 0 <= l < self.num_classes for l in ex.labels):
        raise ValueError(f"task {self.name}: example {ex.key!r} has labels {list(ex.labels)} outside "
                         f"[0, {self.num_classes})")
      yield ex


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
  """f32[n] at orig_rate -> f32[round(n * target / orig)] at target_rate (polyphase, anti-aliased)."""
  if orig_rate <= 0:
    raise ValueError(f"resample: source sample rate must be positive, got {orig_rate}")
  audio = np.asarray(audio, np.float32)
  if orig_rate == target_rate:
    return audio
  g = math.gcd(int(orig_rate), int(target_rate))
  return signal.resample_poly(audio, target_rate // g, orig_rate // g).astype(np.float32)


def _holdout(key: str, fraction: float = 0.1) -> bool:
  """Deterministic membership of a held-out validation subset, by hash of the example's source id."""
  digest = hashlib.sha256(key.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "little") / 2.0 ** 64 < fraction


# ----------------------------------------------------------------------------------------------------------
# The embedded world.

def embedded_task(root: str, name: str, *, sample_rate: int, max_examples: int = 0) -> Task:
  """A held-out task of the embedded world at `root` (the directory holding `tasks/`)."""
  task_dir = paths.join(root, "tasks", name)
  meta_path = paths.join(task_dir, "task.json")
  if not paths.exists(meta_path):
    known = paths.listdir(paths.join(root, "tasks")) if paths.isdir(paths.join(root, "tasks")) else []
    raise DatasetNotFoundError(
        f"embedded task {name!r} not found: no {meta_path}"
        + (f" (tasks there: {known})" if known else
           f". Generate the embedded world with `python -m data_pipeline.world --output {root}`."))
  meta = json.loads(paths.read_text(meta_path))
  for field in ("multi_label", "num_classes"):
    if field not in meta:
      raise ValueError(f"{meta_path}: missing field {field!r}")

  def read(split):
    for clip in schema.read_clips(schema.list_shards(task_dir, split)):
      if clip.sample_rate <= 0:
        raise ValueError(f"embedded task {name}: clip {clip.video_id!r} has no audio/sample_rate")
      yield Example(resample(clip.audio, clip.sample_rate, sample_rate), tuple(clip.label_index),
                    clip.video_id)

  return Task(name=name, multi_label=bool(meta["multi_label"]), num_classes=int(meta["num_classes"]),
              class_names=list(meta.get("class_names", [])), sample_rate=sample_rate,
              source=task_dir, read=read, max_examples=max_examples,
              counts={k: int(v) for k, v in meta.get("counts", {}).items()})


# ----------------------------------------------------------------------------------------------------------
# A folder of your own labelled recordings.

def _class_dirs(directory: str) -> list[str]:
  return sorted(d for d in paths.listdir(directory)
                if not d.startswith(".") and paths.isdir(paths.join(directory, d)))


def _split_groups(root: str, class_name: str, files: list[str]) -> dict[str, list[str]]:
  """One class's files -> {split: files}, whole groups at a time, the same on every machine.

  A group is the first subfolder below the class folder (e.g. a speaker, a recording session, one
  instrument), or the file itself when it lies directly in the class folder: recordings of one group never
  straddle two splits, so a probe cannot score by recognising the session. Groups are ordered by a hash of
  their name and cut at FOLDER_SPLIT_FRACTIONS, each split getting at least one group.
  """
  class_dir = paths.join(root, class_name)
  groups: dict[str, list[str]] = {}
  for f in files:
    rel = f[len(class_dir):].lstrip("/")
    groups.setdefault(rel.split("/")[0], []).append(f)
  if len(groups) < len(SPLITS):
    raise ValueError(
        f"folder task {root}: class {class_name!r} has {len(groups)} group(s) (files directly in its folder, "
        f"or subfolders), but a split into {', '.join(SPLITS)} needs at least {len(SPLITS)}; add recordings, "
        f"or give the splits yourself as {root}/{{train,validation,test}}/<class>/...")
  order = sorted(groups, key=lambda g: hashlib.sha256(f"{class_name}/{g}".encode()).hexdigest())
  n = len(order)
  n_val = max(1, round(FOLDER_SPLIT_FRACTIONS["validation"] * n))
  n_test = max(1, round(FOLDER_SPLIT_FRACTIONS["test"] * n))
  cuts = {"train": order[:n - n_val - n_test], "validation": order[n - n_val - n_test:n - n_test],
          "test": order[n - n_test:]}
  return {split: sorted(f for g in names for f in groups[g]) for split, names in cuts.items()}


def folder_task(root: str, *, sample_rate: int, max_examples: int = 0) -> Task:
  """Single-label recordings in `root`, one subfolder per class (the class name is the folder's name).

  Layouts:
    ROOT/<class>/[<group>/]...<file>             split here, per class, by group (`_split_groups`)
    ROOT/{train,validation,test}/<class>/...<file>  your own splits (every class needs its train files)
  Files: every AUDIO_EXTENSIONS file below a class folder (other files are ignored), any rate, channels and
  length; each file is one example (evaluation embeds it window by window and pools). A file that cannot be
  decoded (corrupt, empty, non-finite, no audio track) is skipped with a warning and counted in
  `Task.skipped` (reported in details.json); an empty class or split is an error.
  """
  root = root.rstrip("/") or root
  if not paths.isdir(root):
    raise DatasetNotFoundError(f"folder task {FOLDER_PREFIX}{root}: {root!r} is not a directory")
  top = _class_dirs(root)
  explicit = set(SPLITS) <= set(top)
  if explicit:
    per_split_classes = {s: _class_dirs(paths.join(root, s)) for s in SPLITS}
    class_names = per_split_classes["train"]
    for split in ("validation", "test"):
      unknown = sorted(set(per_split_classes[split]) - set(class_names))
      if unknown:
        raise ValueError(f"folder task {root}: {split}/ has classes with no train/ folder: {unknown}")
    files = {s: {c: audio_files.files_under(paths.join(root, s, c)) for c in per_split_classes[s]} for s in SPLITS}
  else:
    class_names = top
    files = {s: {} for s in SPLITS}
    for c in class_names:
      found = audio_files.files_under(paths.join(root, c))
      if found:
        for split, chosen in _split_groups(root, c, found).items():
          files[split][c] = chosen
  if len(class_names) < 2:
    raise ValueError(f"folder task {root}: {len(class_names)} class folder(s) ({class_names}); a probe needs "
                     f"at least 2: ROOT/<class>/<audio files>")
  for c in class_names:
    if not files["train"].get(c):
      raise ValueError(f"folder task {root}: class {c!r} has no audio files "
                       f"({', '.join(audio_files.AUDIO_EXTENSIONS)}) for training")
  for split in SPLITS:
    if not any(files[split].values()):
      raise ValueError(f"folder task {root}: no audio files in split {split!r}")
  index = {c: i for i, c in enumerate(class_names)}
  name = FOLDER_PREFIX + (os.path.basename(root) or root)
  skipped: dict[str, dict[str, str]] = {s: {} for s in SPLITS}

  def read(split):
    skipped[split].clear()  # A split read again (e.g. a second probe pass) counts its skips once.
    for c in class_names:
      for path in files[split].get(c, []):
        try:
          audio = audio_files.load_audio(path, sample_rate)
        except audio_files.Skip as e:
          skipped[split][path] = f"{e.reason}: {e.detail}"
          logging.getLogger(__name__).warning("%s: skipped %s (%s: %s)", name, path, e.reason, e.detail)
          continue
        yield Example(audio, (index[c],), path)

  return Task(name=name, multi_label=False, num_classes=len(class_names), class_names=class_names,
              sample_rate=sample_rate, source=f"folder:{root}" + (" (own splits)" if explicit else
                                                                " (split by group hash)"),
              read=read, max_examples=max_examples,
              counts={s: sum(len(v) for v in files[s].values()) for s in SPLITS}, skipped=skipped)


# ----------------------------------------------------------------------------------------------------------
# TFDS datasets (read only if prepared).

@dataclasses.dataclass(frozen=True)
class _TfdsSpec:
  label: tuple[str, ...]  # Path of the ClassLabel feature.
  splits: dict[str, str]  # avcl split -> TFDS split.
  what: str


TFDS_TASKS = {
    "speech_commands": _TfdsSpec(("label",), {"train": "train", "validation": "validation", "test": "test"},
                                 "keyword spotting, 12 classes"),
    "nsynth": _TfdsSpec(("instrument", "family"), {"train": "train", "validation": "valid", "test": "test"},
                        "instrument family, 11 classes"),
    "voxforge": _TfdsSpec(("label",), {"train": "train", "validation": "validation", "test": "test"},
                          "language identification, 6 languages"),
    "voxceleb": _TfdsSpec(("label",), {"train": "train", "validation": "validation", "test": "test"},
                          "speaker identification (VoxCeleb1), 1251 speakers"),
    "crema_d": _TfdsSpec(("label",), {"train": "train", "validation": "validation", "test": "test"},
                         "emotion recognition, 6 classes"),
}


def _tfds():
  tf_cpu.import_tf()  # Hides GPUs from TensorFlow before TFDS touches it.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (deferred: TFDS loads TensorFlow; only real-dataset tasks need it)
  return tfds


def _prepare_hint(name: str, builder, data_dir: str | None) -> str:
  where = data_dir or "~/tensorflow_datasets"
  manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  if manual:
    return (f"It needs a manual download first:\n{' '.join(str(manual).split())}\nThen, on a machine "
            f"with internet access: `tfds build {name} --data_dir {where} --manual_dir MANUAL_DIR`.")
  return (f"Prepare it on a machine with internet access with `tfds build {name} --data_dir {where}` "
          f"(or tfds.builder({name!r}, data_dir={where!r}).download_and_prepare()) and copy the "
          f"directory here; avcl never downloads at evaluation time.")


def tfds_task(name: str, *, sample_rate: int, data_dir: str | None = None, max_examples: int = 0) -> Task:
  """A TFDS audio dataset that is already prepared in `data_dir` (TFDS's default dir when None)."""
  base = name.split("/")[0]
  if base not in TFDS_TASKS:
    raise ValueError(f"unknown TFDS task {name!r}; supported: {sorted(TFDS_TASKS)}")
  spec = TFDS_TASKS[base]
  tfds = _tfds()
  builder = tfds.builder(name, data_dir=data_dir)
  features = builder.info.features
  label_feature = features
  for k in spec.label:
    label_feature = label_feature[k]
  audio_feature = features["audio"]
  rate = int(getattr(audio_feature, "sample_rate", 0) or 0)
  if rate <= 0:
    raise ValueError(f"TFDS dataset {name}: its audio feature declares no sample rate")
  is_int = np.issubdtype(np.dtype(audio_feature.np_dtype), np.integer)

  def open_split(split):
    try:
      return builder.as_dataset(split=spec.splits[split], shuffle_files=False)
    except AssertionError as e:  # TFDS's "could not find data in DIR" when the dataset is not prepared.
      raise DatasetNotFoundError(f"TFDS dataset {name!r} is not prepared in "
                                 f"{data_dir or 'the default TFDS data dir'} ({e}). "
                                 f"{_prepare_hint(base, builder, data_dir)}") from None

  open_split("test")  # Fails now, naming the dataset, rather than after other tasks ran.

  def read(split):
    for i, ex in enumerate(tfds.as_numpy(open_split(split))):
      audio = np.asarray(ex["audio"])
      if audio.ndim == 2:  # [samples, channels] -> mono.
        audio = audio.mean(axis=-1)
      # Integer audio holds 16-bit PCM values; float audio is already in [-1, 1].
      audio = audio.astype(np.float32) / 32768.0 if is_int else audio.astype(np.float32)
      label = ex
      for k in spec.label:
        label = label[k]
      yield Example(resample(audio, rate, sample_rate), (int(label),), f"{name}:{split}:{i}")

  counts = {}
  for ours, theirs in spec.splits.items():
    if theirs in builder.info.splits:
      counts[ours] = int(builder.info.splits[theirs].num_examples)
  return Task(name=base, multi_label=False, num_classes=int(label_feature.num_classes),
              class_names=list(label_feature.names), sample_rate=sample_rate,
              source=f"tfds:{name} ({spec.what})", read=read, max_examples=max_examples, counts=counts)


# ----------------------------------------------------------------------------------------------------------
# AudioSet in the DMVR convention.

def _audioset_files(directory: str, subset: str) -> list[str]:
  files = sorted(f for f in glob.glob(os.path.join(glob.escape(directory), f"{subset}*"))
                 if not os.path.isdir(f) and ".tmp-" not in f)
  if not files:
    raise DatasetNotFoundError(
        f"AudioSet subset {subset!r} not found: no files {os.path.join(directory, subset + '*')}. "
        f"Convert AudioSet to DMVR-style TFRecords of SequenceExamples (keys as in data_pipeline/schema.py: "
        f"WAVEFORM/feature/floats, clip/label/index with the 527 class indices, audio/sample_rate) named "
        f"{', '.join(s + '-*' for s in AUDIOSET_SUBSETS)} in one directory, and pass it with "
        f"--audioset_dir (config eval.audioset_dir).")
  return files


def audioset_task(directory: str, *, sample_rate: int, unbalanced: bool = False,
                  default_sample_rate: int = 0, max_examples: int = 0) -> Task:
  """AudioSet (527 classes, multi-label, mAP) from DMVR TFRecords in `directory`.

  `default_sample_rate` is used for records without `audio/sample_rate` (0: such records are an error).
  """
  if not directory:
    raise DatasetNotFoundError("AudioSet: no directory given; pass --audioset_dir (config "
                               "eval.audioset_dir) pointing at the DMVR TFRecords.")
  train_subsets = ("unbalanced_train", "balanced_train") if unbalanced else ("balanced_train",)
  files = {s: _audioset_files(directory, s) for s in (*train_subsets, "eval")}

  def read(split):
    subsets = ("eval",) if split == "test" else train_subsets
    for subset in subsets:
      for clip in schema.read_clips(files[subset]):
        if split != "test" and _holdout(clip.video_id) != (split == "validation"):
          continue
        rate = clip.sample_rate or default_sample_rate
        if rate <= 0:
          raise ValueError(f"AudioSet record {clip.video_id!r} has no audio/sample_rate; set "
                           "eval.audioset_sample_rate to the rate of the conversion.")
        yield Example(resample(clip.audio, rate, sample_rate), tuple(clip.label_index), clip.video_id)

  name = "audioset_unbalanced" if unbalanced else "audioset"
  return Task(name=name, multi_label=True, num_classes=AUDIOSET_CLASSES, class_names=[],
              sample_rate=sample_rate, source=f"audioset:{directory}", read=read,
              max_examples=max_examples)


# ----------------------------------------------------------------------------------------------------------

def get_task(name: str, *, sample_rate: int, embedded_root: str = "", tfds_data_dir: str | None = None,
             audioset_dir: str = "", audioset_sample_rate: int = 0, max_examples: int = 0) -> Task:
  """Resolves a task name: an embedded-world task, a TFDS dataset name, `audioset[_unbalanced]`, or
  `folder:PATH` (your own labelled recordings, `folder_task`)."""
  if name.startswith(FOLDER_PREFIX):
    return folder_task(name[len(FOLDER_PREFIX):], sample_rate=sample_rate, max_examples=max_examples)
  if name in ("audioset", "audioset_unbalanced"):
    return audioset_task(audioset_dir, sample_rate=sample_rate, unbalanced=name.endswith("unbalanced"),
                         default_sample_rate=audioset_sample_rate, max_examples=max_examples)
  if name.split("/")[0] in TFDS_TASKS:
    return tfds_task(name, sample_rate=sample_rate, data_dir=tfds_data_dir or None,
                     max_examples=max_examples)
  if name in EMBEDDED_TASKS or (embedded_root and paths.isdir(paths.join(embedded_root, "tasks", name))):
    return embedded_task(embedded_root, name, sample_rate=sample_rate, max_examples=max_examples)
  raise ValueError(f"unknown task {name!r}: expected one of the embedded tasks {list(EMBEDDED_TASKS)}, "
                   f"the TFDS datasets {sorted(TFDS_TASKS)}, 'audioset' / 'audioset_unbalanced', or "
                   f"'{FOLDER_PREFIX}PATH' (a folder of your recordings, one subfolder per class)")
