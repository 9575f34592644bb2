"""The sound-event vocabulary (AudioSet-like) and a renderer for each non-speech class.

Classes: speech, the eleven NSynth instrument families, drums, six General MIDI sound effects (sampled
recordings inside TimGM6mb) and two synthetic alarms. Speech is rendered by `speech` (it needs a speaker);
everything else by `render_event`.
"""
import numpy as np

from data_pipeline.world.synth import music

SPEECH = "speech"
# GM sound-effect programs (0-based) of TimGM6mb that stand for everyday sound events.
GM_EFFECTS = {"sea_waves": 122, "bird": 123, "telephone": 124, "helicopter": 125, "applause": 126,
              "gunshot": 127}
SYNTHETIC = ("beep", "siren")
SOUND_EVENT_CLASSES = ((SPEECH,) + music.FAMILIES + ("drums",) + tuple(sorted(GM_EFFECTS)) + SYNTHETIC)
NON_SPEECH_EVENTS = tuple(c for c in SOUND_EVENT_CLASSES if c not in music.FAMILIES and c != SPEECH)


def beep(rng: np.random.Generator, max_seconds: float, sample_rate: int) -> np.ndarray:
  """1-4 sine beeps (an alarm clock, a truck reversing) -> f32[samples]."""
  freq = rng.uniform(500, 2500)
  on, off = rng.uniform(0.08, 0.35), rng.uniform(0.06, 0.3)
  count = int(max(1, min(rng.integers(1, 5), (max_seconds + off) // (on + off))))
  n_on, n_off = int(on * sample_rate), int(off * sample_rate)
  t = np.arange(n_on) / sample_rate
  ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.005)  # 5 ms ramps: no clicks.
  tone = np.sin(2 * np.pi * freq * t) * ramp
  if rng.random() < 0.5:  # Square-ish buzzer.
    tone = np.tanh(4 * tone)
  pieces = []
  for i in range(count):
    pieces.append(tone)
    if i < count - 1:
      pieces.append(np.zeros(n_off))
  x = np.concatenate(pieces)[:int(max_seconds * sample_rate)]
  return (x / np.abs(x).max()).astype(np.float32)


def siren(rng: np.random.Generator, max_seconds: float, sample_rate: int) -> np.ndarray:
  """A wailing or two-tone siren -> f32[samples]."""
  seconds = rng.uniform(min(1.0, max_seconds), max_seconds)
  t = np.arange(int(seconds * sample_rate)) / sample_rate
  low, high = rng.uniform(500, 800), rng.uniform(1000, 1600)
  period = rng.uniform(0.4, 1.5)
  if rng.random() < 0.5:  # Wail: smooth sweep.
    freq = low + (high - low) * 0.5 * (1 - np.cos(2 * np.pi * t / period))
  else:  # Two-tone (hi-lo).
    freq = np.where((t // (period / 2)) % 2 == 0, high, low)
  phase = 2 * np.pi * np.cumsum(freq) / sample_rate
  x = np.sin(phase) + 0.3 * np.sin(2 * phase)
  fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.05)
  x = x * fade
  return (x / np.abs(x).max()).astype(np.float32)


def render_event(rng: np.random.Generator, name: str, max_seconds: float,
                 sample_rate: int = 16000) -> tuple[np.ndarray, int | None]:
  """Sound of event class `name` lasting at most `max_seconds`.

  -> (f32[samples] peak-normalised, GM program used or None).
  """
  if name in music.FAMILY_PROGRAMS:
    progs = music.FAMILY_PROGRAMS[name]
    program = progs[int(rng.integers(len(progs)))]
    return music.render_phrase(rng, program, max_seconds, sample_rate), program
  if name == "drums":
    return music.render_drums(rng, max_seconds, sample_rate), None
  if name in GM_EFFECTS:
    return music.render_effect(rng, GM_EFFECTS[name], max_seconds, sample_rate), GM_EFFECTS[name]
  if name == "beep":
    return beep(rng, max_seconds, sample_rate), None
  if name == "siren":
    return siren(rng, max_seconds, sample_rate), None
  raise ValueError(f"event name={name!r}: not one of {NON_SPEECH_EVENTS + music.FAMILIES} "
                   "(speech is rendered by data_pipeline.world.synth.speech)")
