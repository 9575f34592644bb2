"""Music from a real sampled General MIDI soundfont.

`TimGM6mb.sf2` ships inside the `pretty_midi` wheel; `tinysoundfont` renders it. Instrument families follow
NSynth's eleven families, assigned over General MIDI program groups (GM program numbers are 0-based here):
a GM group maps to the NSynth family its instruments belong to, with the few misfits (timpani, orchestra hit)
left out of every family.

The synthesiser is reset before each rendering, so a phrase depends only on its arguments, not on what the
process rendered before (the world must not depend on how clips are spread over worker processes).
"""
import functools
import os

import numpy as np

# NSynth instrument families over GM programs (0-based).
FAMILY_PROGRAMS: dict[str, tuple[int, ...]] = {
    "bass": tuple(range(32, 40)),  # Acoustic/electric/slap/synth basses.
    "brass": tuple(range(56, 64)),  # Trumpet .. synth brass.
    "flute": tuple(range(72, 80)),  # GM "pipe": piccolo, flute, recorder, pan flute, ..., ocarina.
    "guitar": tuple(range(24, 32)),
    "keyboard": tuple(range(0, 8)),  # Pianos, electric pianos, harpsichord, clavinet.
    "mallet": tuple(range(8, 16)),  # GM "chromatic percussion": celesta .. dulcimer.
    "organ": tuple(range(16, 24)),  # Organs, accordion, harmonica.
    "reed": tuple(range(64, 72)),  # Saxophones, oboe, English horn, bassoon, clarinet.
    "string": tuple(range(40, 47)) + tuple(range(48, 52)),  # Solo strings and string ensembles.
    "synth_lead": tuple(range(80, 88)),
    "vocal": (52, 53, 54),  # Choir aahs, voice oohs, synth voice.
}
FAMILIES = tuple(sorted(FAMILY_PROGRAMS))
FAMILY_OF_PROGRAM = {p: fam for fam, progs in FAMILY_PROGRAMS.items() for p in progs}
# Every melodic program that pretraining may play (pads, ethnic and percussive ones have no family label).
MELODIC_PROGRAMS = tuple(range(0, 120))

# Comfortable MIDI note range per family (the soundfont's samples sound natural there).
_REGISTER = {"bass": (28, 55), "brass": (50, 79), "flute": (62, 93), "guitar": (45, 76),
             "keyboard": (45, 84), "mallet": (60, 91), "organ": (45, 79), "reed": (50, 79),
             "string": (48, 84), "synth_lead": (52, 84), "vocal": (52, 76)}
_DEFAULT_REGISTER = (48, 79)
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_PENTATONIC = (0, 2, 4, 7, 9)

# GM drum kits (bank 128 presets present in TimGM6mb) and the notes a simple groove uses.
DRUM_KITS = (0, 8, 16, 24, 25, 32, 40, 48)
_KICK, _SNARE, _CLAP, _CLOSED_HAT, _OPEN_HAT, _LOW_TOM, _MID_TOM, _HIGH_TOM, _CRASH, _RIDE = (
    36, 38, 39, 42, 46, 45, 47, 50, 49, 51)

_DRUM_CHANNEL = 9
_RELEASE_SECONDS = 0.3  # Tail rendered after the last note-off.
_FLUSH_SAMPLES = 2048  # Rendered and dropped after a reset, while ended voices fade out.


def soundfont_path() -> str:
  import pretty_midi  # pylint: disable=g-import-not-at-top  (deferred: heavy, and only the path of its soundfont is needed)
  path = os.path.join(os.path.dirname(pretty_midi.__file__), "TimGM6mb.sf2")
  if not os.path.exists(path):
    raise FileNotFoundError(f"TimGM6mb.sf2 not found at {path}: is pretty_midi installed?")
  return path


class _Renderer:
  """The process's tinysoundfont synthesiser with TimGM6mb loaded."""

  def __init__(self, sample_rate: int):
    import tinysoundfont  # pylint: disable=g-import-not-at-top  (optional: see data_pipeline.optional)
    self.sample_rate = sample_rate
    self.synth = tinysoundfont.Synth(samplerate=sample_rate)
    self.sfid = self.synth.sfload(soundfont_path())
    self.soundfont = self.synth.soundfonts[self.sfid]

  def render(self, events: list[tuple[float, str, int, int, int]], program: int, drums: bool,
             bank: int, seconds: float) -> np.ndarray:
    """events: (time_s, "on"|"off", channel, key, velocity) -> mono f32[round(seconds * rate)]."""
    # tsf_reset ends every voice with a quick (~10 ms) release and frees the channel state; rendering
    # that release away leaves no trace of earlier phrases in this one.
    self.soundfont.reset()
    self.synth.generate_simple(_FLUSH_SAMPLES)
    channel = _DRUM_CHANNEL if drums else 0
    self.synth.program_select(channel, self.sfid, bank, program, is_drums=drums)
    total = int(round(seconds * self.sample_rate))
    out = np.zeros((total, 2), np.float32)
    pos = 0
    for time_s, kind, _, key, velocity in sorted(events, key=lambda e: (e[0], e[1] == "on")):
      at = min(total, int(round(time_s * self.sample_rate)))
      if at > pos:
        out[pos:at] = np.frombuffer(self.synth.generate(at - pos), np.float32).reshape(-1, 2)
        pos = at
      if kind == "on":
        self.synth.noteon(channel, key, velocity)
      else:
        self.synth.noteoff(channel, key)
    if total > pos:
      out[pos:] = np.frombuffer(self.synth.generate(total - pos), np.float32).reshape(-1, 2)
    return out.mean(axis=1)

  @functools.cache  # noqa: B019 (one renderer per worker process lives as long as the process)
  def playable_keys(self, program: int, low: int, high: int) -> tuple[int, ...]:
    """Keys in [low, high] for which the soundfont has a sample on `program` (TimGM6mb leaves a few holes,
    e.g. the whistle's top octave): probed once per process by rendering a 50 ms note."""
    keys = []
    for key in range(low, high + 1):
      probe = self.render([(0.0, "on", 0, key, 100), (0.05, "off", 0, key, 0)], program, False, 0, 0.1)
      if np.abs(probe).max() > 0:
        keys.append(key)
    return tuple(keys)


@functools.cache
def renderer(sample_rate: int) -> _Renderer:
  return _Renderer(sample_rate)


def _normalise(x: np.ndarray, what: str) -> np.ndarray:
  peak = float(np.abs(x).max()) if x.size else 0.0
  if peak == 0.0:
    raise RuntimeError(f"the soundfont rendered silence for {what}")
  return (x / peak).astype(np.float32)


def register(program: int) -> tuple[int, int]:
  """(lowest, highest) MIDI key a phrase on `program` may use."""
  return _REGISTER.get(FAMILY_OF_PROGRAM.get(program, ""), _DEFAULT_REGISTER)


def melody_events(rng: np.random.Generator, program: int, max_seconds: float,
                  playable: tuple[int, ...] | None = None):
  """A short phrase: notes of a random scale in the program's register, sometimes as chords.

  `playable`: keys the soundfont can sound on `program` (None: the whole register).
  -> (events [(time_s, "on"|"off", 0, key, velocity)], end_s) with end_s <= max_seconds - release.
  """
  low, high = register(program)
  playable = set(range(low, high + 1) if playable is None else playable)
  if not playable:
    raise ValueError(f"program {program} has no playable key in its register [{low}, {high}]")
  high = max(playable)
  scale = (_MAJOR, _MINOR, _PENTATONIC)[int(rng.integers(3))]
  root = int(rng.integers(low, max(low + 1, high - 12)))
  keys = [root + 12 * octave + step for octave in range(3) for step in scale]
  keys = [k for k in keys if low <= k <= high and k in playable]
  if not keys:  # The scale misses every playable key: play the playable ones.
    keys = sorted(playable)
  beat = 60.0 / float(rng.uniform(80, 180))
  chordal = FAMILY_OF_PROGRAM.get(program) in ("keyboard", "guitar", "organ", "mallet", "string") and \
      rng.random() < 0.4
  budget = max_seconds - _RELEASE_SECONDS
  events, t, idx = [], 0.0, int(rng.integers(len(keys)))
  while True:
    duration = beat * float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]))
    if t + duration > budget:
      break
    idx = int(np.clip(idx + rng.integers(-3, 4), 0, len(keys) - 1))
    chord = [keys[idx]] + ([keys[min(idx + 2, len(keys) - 1)], keys[min(idx + 4, len(keys) - 1)]]
                           if chordal else [])
    velocity = int(rng.integers(60, 127))
    for key in dict.fromkeys(chord):  # Ordered, without repeats.
      events.append((t, "on", 0, key, velocity))
      events.append((t + duration * 0.9, "off", 0, key, 0))
    t += duration
    # A rest now and then, so a phrase has audible onsets after silence.
    if rng.random() < 0.2:
      t += beat
  if not events:  # max_seconds shorter than one note: play a single short one.
    key = keys[len(keys) // 2]
    duration = max(0.05, budget)
    events = [(0.0, "on", 0, key, 100), (duration, "off", 0, key, 0)]
    t = duration
  return events, min(t, budget)


def render_phrase(rng: np.random.Generator, program: int, max_seconds: float,
                  sample_rate: int = 16000) -> np.ndarray:
  """A phrase on GM `program` lasting at most `max_seconds` -> f32[samples], peak-normalised."""
  if not 0 <= program < 128:
    raise ValueError(f"program={program}: a General MIDI program is in [0, 127]")
  synth = renderer(sample_rate)
  events, end = melody_events(rng, program, max_seconds, synth.playable_keys(program, *register(program)))
  audio = synth.render(events, program, False, 0, end + _RELEASE_SECONDS)
  return _normalise(audio, f"program {program}")


def render_drums(rng: np.random.Generator, max_seconds: float, sample_rate: int = 16000) -> np.ndarray:
  """A drum groove on a random GM kit -> f32[samples], peak-normalised."""
  kit = DRUM_KITS[int(rng.integers(len(DRUM_KITS)))]
  step = 60.0 / float(rng.uniform(90, 160)) / 2  # Eighth notes.
  budget = max_seconds - _RELEASE_SECONDS
  n_steps = max(1, int(budget / step))
  hat = (_CLOSED_HAT, _RIDE)[int(rng.integers(2))]
  snare = (_SNARE, _CLAP)[int(rng.integers(2))]
  kick_pattern = rng.random(8) < 0.3
  kick_pattern[0] = True
  events = []
  for i in range(n_steps):
    t = i * step
    hits = []
    if i % 8 in (2, 6):
      hits.append(snare)
    if kick_pattern[i % 8]:
      hits.append(_KICK)
    if rng.random() < 0.8:
      hits.append(hat if rng.random() < 0.9 else _OPEN_HAT)
    if rng.random() < 0.06:
      hits.append((_LOW_TOM, _MID_TOM, _HIGH_TOM)[int(rng.integers(3))])
    if i == 0 and rng.random() < 0.3:
      hits.append(_CRASH)
    for key in hits:
      events.append((t, "on", _DRUM_CHANNEL, key, int(rng.integers(70, 127))))
      events.append((t + step * 0.5, "off", _DRUM_CHANNEL, key, 0))
  audio = renderer(sample_rate).render(events, kit, True, 128, n_steps * step + _RELEASE_SECONDS)
  return _normalise(audio, f"drum kit {kit}")


def render_effect(rng: np.random.Generator, program: int, max_seconds: float,
                  sample_rate: int = 16000) -> np.ndarray:
  """One to three presses of a GM sound-effect program (122 seashore .. 127 gunshot) -> f32[samples]."""
  budget = max_seconds - _RELEASE_SECONDS
  presses = int(rng.integers(1, 4))
  events, t = [], 0.0
  for _ in range(presses):
    duration = float(rng.uniform(0.3, 1.2))
    if t + duration > budget:
      break
    key = int(rng.integers(55, 72))
    events.append((t, "on", 0, key, int(rng.integers(80, 127))))
    events.append((t + duration, "off", 0, key, 0))
    t += duration + float(rng.uniform(0.1, 0.5))
  if not events:
    events = [(0.0, "on", 0, 60, 110), (max(0.05, budget), "off", 0, 60, 0)]
  end = max(e[0] for e in events)
  audio = renderer(sample_rate).render(events, program, False, 0, end + _RELEASE_SECONDS)
  return _normalise(audio, f"effect program {program}")
