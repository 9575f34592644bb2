r"""The embedded audio-visual world: a small but real pretraining set and five downstream tasks, generated
offline from registry packages only (eSpeak NG voices, the TimGM6mb General MIDI soundfont), deterministic
from one seed.

    python -m data_pipeline.world --output DIR [--clips N] [--task-clips M] [--seed S] [--workers W]

Layout (design.md, "Embedded world layout"):

    ROOT/world.json                               written last: its presence means the world is complete
    ROOT/GENERATING                               present while a generation runs (or was killed): the
                                                  shards beside it may be partial
    ROOT/pretrain/train-00000-of-000NN.tfrecord   N clips; labels (sound-event classes) stored, not for training
    ROOT/tasks/<task>/{train,validation,test}-*.tfrecord
    ROOT/tasks/<task>/task.json                   name, metric, multi_label, num_classes, class_names, counts

Tasks (what is held out is what makes each one a test of generalisation, not of memory):
- `keyword`: ten Speech-Commands keywords + `_unknown_` (other words), English accents; its speakers are
  disjoint from pretraining's and the train/validation/test speakers are disjoint from each other.
- `speaker`: identify one of 20 English speakers (an eSpeak accent + variant + pitch, range and rate; each
  utterance varies a little around them) from a phrase; splits share speakers, never utterances; speakers
  disjoint from pretraining's.
- `language`: twelve languages; train/validation/test speakers are disjoint from each other and from
  pretraining's, so the voice does not give the language away.
- `instrument`: NSynth's eleven families over GM program groups; the GM programs of train, validation and
  test are disjoint (as NSynth holds out instruments).
- `sound_events`: multi-label (AudioSet-like, scored by mAP), 1-3 simultaneous sources among speech, the
  instrument families, drums, GM sound effects and synthetic alarms.

"Disjoint speakers" is strict: the world partitions eSpeak (voice, variant) pairs between pools, so no two
pools hold speakers that differ only in pitch or rate.

Every clip: 3 s, 16 kHz mono float32 audio, 10 fps 64x64 JPEG frames, background noise at a random SNR,
random gain, reverberation on half the clips. Its `video_id` names the clip and describes its sources, e.g.
`keyword/test/000004:word[en-US+m3/p50/r60/w170]=stop;event[beep]`.

Each clip is rendered from its own random stream (seed, split, index), so the bytes do not depend on the
number of worker processes.
"""
import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import threading
import time
import zlib

import numpy as np
from tqdm import tqdm

from data_pipeline import optional, schema, tf_cpu
from data_pipeline.world.synth import events, music, scene, speech

GENERATOR_VERSION = 1
DEFAULT_CLIPS = 1600  # Pretraining clips of the default world; tasks scale with it (see `split_sizes`).
SAMPLE_RATE = 16000
FPS = 10.0
FRAME_SIZE = 64
CLIP_SECONDS = 3.0
CLIPS_PER_SHARD = 200
MIN_PRETRAIN_SHARDS = 4  # Even a tiny world can be split over a few processes.
SPLITS = ("train", "validation", "test")
TASKS = ("keyword", "speaker", "language", "instrument", "sound_events")

# Speaker pools: how many (voice, variant) pairs each gets.
KEYWORD_SPEAKERS = {"train": 24, "validation": 8, "test": 12}
SPEAKER_TASK_SPEAKERS = 20
SPEAKER_TASK_LANGUAGE = "en"
LANGUAGE_SPEAKERS_PER_LANGUAGE = {"train": 4, "validation": 2, "test": 2}
PRETRAIN_SPEAKERS_PER_LANGUAGE = 8
PRETRAIN_ENGLISH_SPEAKERS = 24  # English words are the written forms pretraining shows.


def _stable_int(*keys) -> int:
  return zlib.crc32("/".join(map(str, keys)).encode())


def _rng(seed: int, *keys) -> np.random.Generator:
  """An independent random stream per (seed, keys): fixed whatever else the world draws."""
  return np.random.default_rng([seed, _stable_int(*keys)])


def split_sizes(clips: int, num_classes: int = 0) -> dict[str, int]:
  """Examples per task split for a world of `clips` pretraining clips (the default gives 200/80/120).

  A single-label task's train split holds every class at least once (`num_classes`), however small the world.
  """
  return {"train": max(8, num_classes, round(clips / 8)), "validation": max(4, round(clips / 20)),
          "test": max(4, round(3 * clips / 40))}


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """What one clip holds; rendering it needs nothing else."""
  split_dir: str  # Relative to ROOT, e.g. "tasks/keyword".
  split: str  # "train", "validation" or "test".
  index: int
  sources: tuple[scene.Source, ...]
  label_index: tuple[int, ...]
  label_string: tuple[str, ...]

  @property
  def key(self) -> str:
    return f"{self.split_dir.removeprefix('tasks/')}/{self.split}/{self.index:06d}"


def describe(source: scene.Source) -> str:
  if source.kind == "speech":
    return f"speech[{source.speaker.name}]"
  if source.kind == "word":
    return f"word[{source.speaker.name}]={source.text}"
  if source.kind == "program":
    return f"program[{source.program}]"
  return f"event[{source.name}]"


# --------------------------------------------------------------------------------------------------------
# Speakers.

def speaker_pools(seed: int) -> dict[str, list[speech.Speaker]]:
  """Disjoint speaker pools: "pretrain", "keyword/<split>", "speaker", "language/<split>".

  (voice, variant) pairs are dealt out once, in a seeded order, so pools never share one.
  """
  rng = _rng(seed, "speakers")
  combos = [(lang.code, voice, variant) for lang in speech.ALL_LANGUAGES for voice in lang.voices
            for variant in speech.VARIANTS]
  order = rng.permutation(len(combos))
  free = [combos[i] for i in order]
  used = set()

  def take(count, predicate):
    got = []
    for combo in free:
      if len(got) == count:
        break
      if combo not in used and predicate(combo, got):
        used.add(combo)
        got.append(combo)
    if len(got) < count:
      raise RuntimeError(f"speaker pools: only {len(got)} of {count} (voice, variant) pairs left")
    return [speech.random_speaker(rng, *combo) for combo in got]

  pools = {}
  for split in SPLITS:
    pools[f"keyword/{split}"] = take(KEYWORD_SPEAKERS[split], lambda c, g: c[0] == "en")
  # Speaker identification: English speakers (as in VoxCeleb, mostly one language, so the language does not
  # give the speaker away) with distinct variants, so no two classes share formant presets.
  pools["speaker"] = take(SPEAKER_TASK_SPEAKERS,
                          lambda c, g: c[0] == SPEAKER_TASK_LANGUAGE and c[2] not in {x[2] for x in g})
  for split in SPLITS:
    pools[f"language/{split}"] = [
        spk for lang in speech.TASK_LANGUAGES
        for spk in take(LANGUAGE_SPEAKERS_PER_LANGUAGE[split], lambda c, g, code=lang.code: c[0] == code)]
  pretrain = []
  for lang in speech.ALL_LANGUAGES:
    count = PRETRAIN_ENGLISH_SPEAKERS if lang.code == "en" else PRETRAIN_SPEAKERS_PER_LANGUAGE
    pretrain += take(count, lambda c, g, code=lang.code: c[0] == code)
  pools["pretrain"] = pretrain
  return pools


def instrument_programs(seed: int) -> dict[str, dict[str, list[int]]]:
  """Per split, per family: the GM programs it plays; the splits' programs are disjoint (NSynth-like)."""
  rng = _rng(seed, "instrument-programs")
  out = {split: {} for split in SPLITS}
  for family in music.FAMILIES:
    progs = [int(p) for p in rng.permutation(music.FAMILY_PROGRAMS[family])]
    n_test = max(1, round(len(progs) / 4))
    n_val = max(1, round(len(progs) / 8))
    out["test"][family] = sorted(progs[:n_test])
    out["validation"][family] = sorted(progs[n_test:n_test + n_val])
    out["train"][family] = sorted(progs[n_test + n_val:])
  return out


# --------------------------------------------------------------------------------------------------------
# Sampling clips.

EVENT_CLASSES = events.SOUND_EVENT_CLASSES
EVENT_INDEX = {name: i for i, name in enumerate(EVENT_CLASSES)}


def _event_labels(sources) -> tuple[tuple[int, ...], tuple[str, ...]]:
  """Sound-event classes present among `sources` (sorted, unique)."""
  names = set()
  for s in sources:
    if s.kind in ("speech", "word"):
      names.add(events.SPEECH)
    elif s.kind == "program":
      if s.program in music.FAMILY_OF_PROGRAM:
        names.add(music.FAMILY_OF_PROGRAM[s.program])
    else:
      names.add(s.name)
  idx = sorted(EVENT_INDEX[n] for n in names)
  return tuple(idx), tuple(EVENT_CLASSES[i] for i in idx)


def _pick(rng, seq):
  return seq[int(rng.integers(len(seq)))]


def _balanced_labels(rng: np.random.Generator, n: int, num_classes: int) -> list[int]:
  """n labels, every class within one of n / num_classes, in random order."""
  base = rng.permutation(num_classes)
  labels = [int(base[i % num_classes]) for i in range(n)]
  return [labels[i] for i in rng.permutation(n)]


def _pretrain_source(rng, speakers: list[speech.Speaker]) -> scene.Source:
  u = rng.random()
  if u < 0.3:
    return scene.Source("speech", speaker=_pick(rng, speakers))
  if u < 0.4:
    english = [s for s in speakers if s.language == "en"]
    word = _pick(rng, speech.KEYWORDS + speech.UNKNOWN_WORDS)
    return scene.Source("word", speaker=_pick(rng, english), text=word)
  if u < 0.75:
    return scene.Source("program", program=_pick(rng, music.MELODIC_PROGRAMS))
  return scene.Source("event", name=_pick(rng, events.NON_SPEECH_EVENTS))


def plan_pretrain(seed: int, n: int, pools) -> list[ClipSpec]:
  rng = _rng(seed, "plan", "pretrain")
  specs = []
  for i in range(n):
    k = 1 + int(rng.choice(3, p=[0.6, 0.3, 0.1]))
    sources = tuple(_pretrain_source(rng, pools["pretrain"]) for _ in range(k))
    idx, names = _event_labels(sources)
    specs.append(ClipSpec("pretrain", "train", i, sources, idx, names))
  return specs


def _background_event(rng) -> scene.Source:
  """A quiet distractor under the main source (a TV, a passing siren)."""
  return scene.Source("event", name=_pick(rng, events.NON_SPEECH_EVENTS), gain_db=float(rng.uniform(-20, -10)))


def plan_keyword(seed, clips, pools):
  classes = speech.KEYWORDS + (speech.UNKNOWN_KEYWORD,)
  sizes = split_sizes(clips, len(classes))
  specs = []
  for split in SPLITS:
    rng = _rng(seed, "plan", "keyword", split)
    for i, label in enumerate(_balanced_labels(rng, sizes[split], len(classes))):
      word = classes[label] if label < len(speech.KEYWORDS) else _pick(rng, speech.UNKNOWN_WORDS)
      sources = [scene.Source("word", speaker=_pick(rng, pools[f"keyword/{split}"]), text=word)]
      if rng.random() < 0.25:
        sources.append(_background_event(rng))
      specs.append(ClipSpec("tasks/keyword", split, i, tuple(sources), (label,), (classes[label],)))
  return classes, specs


def plan_speaker(seed, clips, pools):
  speakers = pools["speaker"]
  classes = tuple(s.name for s in speakers)
  sizes = split_sizes(clips, len(classes))
  specs = []
  for split in SPLITS:
    rng = _rng(seed, "plan", "speaker", split)
    for i, label in enumerate(_balanced_labels(rng, sizes[split], len(classes))):
      sources = (scene.Source("speech", speaker=speakers[label]),)
      specs.append(ClipSpec("tasks/speaker", split, i, sources, (label,), (classes[label],)))
  return classes, specs


def plan_language(seed, clips, pools):
  classes = tuple(lang.code for lang in speech.TASK_LANGUAGES)
  sizes = split_sizes(clips, len(classes))
  specs = []
  for split in SPLITS:
    rng = _rng(seed, "plan", "language", split)
    by_lang = {code: [s for s in pools[f"language/{split}"] if s.language == code] for code in classes}
    for i, label in enumerate(_balanced_labels(rng, sizes[split], len(classes))):
      sources = (scene.Source("speech", speaker=_pick(rng, by_lang[classes[label]])),)
      specs.append(ClipSpec("tasks/language", split, i, sources, (label,), (classes[label],)))
  return classes, specs


def plan_instrument(seed, clips, programs):
  classes = music.FAMILIES
  sizes = split_sizes(clips, len(classes))
  specs = []
  for split in SPLITS:
    rng = _rng(seed, "plan", "instrument", split)
    for i, label in enumerate(_balanced_labels(rng, sizes[split], len(classes))):
      program = _pick(rng, programs[split][classes[label]])
      sources = (scene.Source("program", program=program),)
      specs.append(ClipSpec("tasks/instrument", split, i, sources, (label,), (classes[label],)))
  return classes, specs


def plan_sound_events(seed, clips, pools):
  sizes = split_sizes(clips)
  specs = []
  for split in SPLITS:
    rng = _rng(seed, "plan", "sound_events", split)
    for i in range(sizes[split]):
      k = 1 + int(rng.choice(3, p=[0.4, 0.35, 0.25]))
      names = [EVENT_CLASSES[j] for j in rng.choice(len(EVENT_CLASSES), size=k, replace=False)]
      sources = tuple(scene.Source("speech", speaker=_pick(rng, pools["pretrain"])) if name == events.SPEECH
                      else scene.Source("event", name=name) for name in names)
      idx, labels = _event_labels(sources)
      specs.append(ClipSpec("tasks/sound_events", split, i, sources, idx, labels))
  return EVENT_CLASSES, specs


@dataclasses.dataclass
class WorldPlan:
  seed: int
  clips: int
  pools: dict
  programs: dict
  classes: dict  # task -> class names.
  specs: list  # ClipSpec, grouped by (split_dir, split) in writing order.


def plan_world(seed: int, clips: int, task_clips: int | None = None) -> WorldPlan:
  """Everything about the world except the rendered bytes (cheap: no synthesis).

  task_clips: the task splits are sized as for a world of this many pretraining clips (`split_sizes`);
  None or 0: `clips`. Each task and the pretraining set draw from their own random streams, so a world of
  4N pretraining clips with task_clips=N has the N-clip world's tasks, clip for clip, and its first N
  pretraining clips: more pretraining data with the tasks held fixed.
  """
  if clips < 1:
    raise ValueError(f"clips={clips}: the world needs at least 1 pretraining clip")
  if task_clips is not None and task_clips < 0:
    raise ValueError(f"task_clips={task_clips}: must be >= 0 (0: as clips)")
  sized = task_clips or clips
  if seed < 0:
    raise ValueError(f"seed={seed}: must be >= 0")
  pools = speaker_pools(seed)
  programs = instrument_programs(seed)
  specs = plan_pretrain(seed, clips, pools)
  classes = {}
  for task, (names, task_specs) in (("keyword", plan_keyword(seed, sized, pools)),
                                     ("speaker", plan_speaker(seed, sized, pools)),
                                     ("language", plan_language(seed, sized, pools)),
                                     ("instrument", plan_instrument(seed, sized, programs)),
                                     ("sound_events", plan_sound_events(seed, sized, pools))):
    classes[task] = tuple(names)
    specs += task_specs
  return WorldPlan(seed, clips, pools, programs, classes, specs)


# --------------------------------------------------------------------------------------------------------
# Rendering and writing.

def render_clip(spec_and_seed) -> bytes:
  """(ClipSpec, seed) -> serialized SequenceExample. Runs in worker processes."""
  spec, seed = spec_and_seed
  rng = _rng(seed, "render", spec.split_dir, spec.split, spec.index)
  rendered = scene.render_scene(rng, list(spec.sources), clip_seconds=CLIP_SECONDS, sample_rate=SAMPLE_RATE,
                                fps=FPS, frame_size=FRAME_SIZE)
  parts = []
  for source, text in zip(spec.sources, rendered.texts):
    d = describe(source)
    if source.kind == "speech":
      d += f"={text}"
    parts.append(d)
  clip = schema.Clip(video_id=f"{spec.key}:{';'.join(parts)}", audio=rendered.audio, sample_rate=SAMPLE_RATE,
                     frames=rendered.frames, fps=FPS, start_us=0, end_us=int(round(CLIP_SECONDS * 1e6)),
                     label_index=list(spec.label_index), label_string=list(spec.label_string))
  return schema.serialize(clip)


def _num_shards(split_dir: str, n: int) -> int:
  shards = math.ceil(n / CLIPS_PER_SHARD)
  if split_dir == "pretrain":
    shards = max(shards, min(n, MIN_PRETRAIN_SHARDS))
  return max(1, shards)


def _progress(total: int, enabled: bool):
  if not enabled:
    return None
  return tqdm(total=total, unit="clip", desc="embedded world", file=sys.stderr)


# Present in a world's directory from the start of a generation until its world.json is written.
GENERATING_MARKER = "GENERATING"


def generate(output: str, clips: int | None = None, seed: int = 0, workers: int | None = None,
             progress: bool = True, task_clips: int | None = None) -> dict:
  """Generates the world into `output` and returns the contents of its world.json.

  clips: pretraining clips; None or 0 mean DEFAULT_CLIPS (as `config.data.world_clips` does).
  task_clips: size the task splits as for this many pretraining clips (`plan_world`); None or 0: `clips`
  (as `config.data.world_task_clips` does).
  workers: processes rendering clips (None: os.cpu_count()); the output does not depend on it.
  """
  if not clips:
    clips = DEFAULT_CLIPS
  if workers is None:
    workers = os.cpu_count() or 1
  if workers < 1:
    raise ValueError(f"workers={workers}: must be >= 1")
  # Before any folder or worker: a plain `pip install -e .` lacks tinysoundfont (see data_pipeline.optional).
  optional.require("tinysoundfont", "generating the embedded world (data_pipeline.world)")
  plan = plan_world(seed, clips, task_clips)
  # TensorFlow (for the TFRecord writer) takes seconds to import: do it while the workers render.
  tf_import = threading.Thread(target=tf_cpu.import_tf, daemon=True)
  tf_import.start()
  os.makedirs(output, exist_ok=True)
  world_json = os.path.join(output, "world.json")
  if os.path.exists(world_json):
    os.remove(world_json)  # Until this run finishes, the directory is not a complete world.
  # Marks the shards as partial until world.json is written: a killed generation leaves pretrain/ behind,
  # which a reader checking only for pretrain/ (any dataset in this layout) would take for a dataset.
  marker = os.path.join(output, GENERATING_MARKER)
  with open(marker, "w") as f:
    f.write(f"pid {os.getpid()}\n")

  groups: dict[tuple[str, str], list[ClipSpec]] = {}
  for spec in plan.specs:
    groups.setdefault((spec.split_dir, spec.split), []).append(spec)
  counts = {f"{d}/{s}": len(v) for (d, s), v in groups.items()}
  jobs = [(spec, seed) for spec in plan.specs]

  bar = _progress(len(jobs), progress)
  pool = None
  if workers > 1:
    # spawn: workers start clean (no inherited TensorFlow or eSpeak state) and import only the synthesisers.
    pool = multiprocessing.get_context("spawn").Pool(workers)
    records_iter = pool.imap(render_clip, jobs, chunksize=4)
  else:
    records_iter = map(render_clip, jobs)
  total_bytes = 0
  try:
    pending: list[bytes] = []
    order = [(d, s) for d, s in groups]
    group_i = 0
    for record in records_iter:
      pending.append(record)
      if bar is not None:
        bar.update(1)
      split_dir, split = order[group_i]
      if len(pending) == len(groups[(split_dir, split)]):
        tf_import.join()
        directory = os.path.join(output, split_dir)
        schema.write_shards(pending, directory, split, _num_shards(split_dir, len(pending)))
        total_bytes += sum(len(r) for r in pending)
        pending = []
        group_i += 1
  except BaseException:
    if pool is not None:
      pool.terminate()
      pool.join()
    raise
  else:
    if pool is not None:
      pool.close()  # Workers exit normally; their eSpeak servers see end of input and exit too.
      pool.join()
  finally:
    if bar is not None:
      bar.close()

  for task in TASKS:
    names = plan.classes[task]
    task_json = {"name": task, "metric": "mAP" if task == "sound_events" else "accuracy",
                 "multi_label": task == "sound_events", "num_classes": len(names),
                 "class_names": list(names),
                 "counts": {split: counts[f"tasks/{task}/{split}"] for split in SPLITS}}
    with open(os.path.join(output, "tasks", task, "task.json"), "w") as f:
      json.dump(task_json, f, indent=1, ensure_ascii=False)
  world = {
      "generator": "data_pipeline.world",
      "generator_version": GENERATOR_VERSION,
      "format_version": schema.FORMAT_VERSION,
      "seed": seed,
      "clips": clips,
      "task_clips": task_clips or clips,
      "counts": counts,
      "total_clips": sum(counts.values()),
      "record_bytes": total_bytes,
      "sample_rate": SAMPLE_RATE,
      "fps": FPS,
      "frame_size": FRAME_SIZE,
      "clip_seconds": CLIP_SECONDS,
      "pretrain_label_vocabulary": list(EVENT_CLASSES),
      "tasks": {
          "keyword": "Speech-Commands keywords + _unknown_; speakers disjoint from pretraining and across splits",
          "speaker": "speaker identification (English); speakers disjoint from pretraining; splits share speakers",
          "language": "language identification; speakers disjoint from pretraining and across splits",
          "instrument": "NSynth families over GM program groups; GM programs disjoint across splits",
          "sound_events": "multi-label, 1-3 simultaneous sources; scored by mAP",
      },
      "speakers": {pool: [s.name for s in spk] for pool, spk in plan.pools.items()},
      "instrument_programs": plan.programs,
  }
  tmp = world_json + ".tmp"
  with open(tmp, "w") as f:
    json.dump(world, f, indent=1, ensure_ascii=False)
  os.replace(tmp, world_json)
  os.remove(marker)
  return world


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m data_pipeline.world",
      description="Generate the embedded audio-visual world (pretraining clips and five downstream tasks) "
                  "offline, deterministically from --seed.")
  parser.add_argument("--output", required=True, help="directory to write the world into")
  parser.add_argument("--clips", type=int, default=DEFAULT_CLIPS,
                      help=f"pretraining clips (default {DEFAULT_CLIPS}); task splits scale with it: "
                           "train N/8, validation N/20, test 3N/40 (at least 8/4/4)")
  parser.add_argument("--task-clips", type=int, default=0,
                      help="size the task splits as for a world of this many pretraining clips (default 0: "
                           "--clips); the tasks are then those of that world, clip for clip")
  parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
  parser.add_argument("--workers", type=int, default=None,
                      help="worker processes (default: os.cpu_count()); the output does not depend on it")
  parser.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)
  if args.clips < 1:
    parser.error(f"--clips must be >= 1, got {args.clips}")
  if args.seed < 0:
    parser.error(f"--seed must be >= 0, got {args.seed}")
  if args.task_clips < 0:
    parser.error(f"--task-clips must be >= 0 (0: as --clips), got {args.task_clips}")
  if args.workers is not None and args.workers < 1:
    parser.error(f"--workers must be >= 1, got {args.workers}")
  optional.exit_if_missing("tinysoundfont", "python -m data_pipeline.world")
  start = time.time()
  world = generate(args.output, clips=args.clips, seed=args.seed, workers=args.workers,
                   progress=not args.no_progress, task_clips=args.task_clips)
  seconds = time.time() - start
  print(f"embedded world: {world['total_clips']} clips ({world['record_bytes'] / 2**20:.1f} MiB of records) "
        f"in {seconds:.1f} s -> {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
