"""Speech from eSpeak NG, driven through ctypes.

The `espeakng-loader` wheel ships `libespeak-ng` and its voice data, so speech needs nothing outside PyPI;
ctypes drives the library (in `espeak_server.py`). eSpeak synthesises at its native rate (22050 Hz) into a
callback buffer; we resample to the target rate.

A *speaker* is an eSpeak voice (a language or accent, e.g. `en-GB-scotland`) + a voice variant (formant and
pitch-range presets such as `m3`, `f2`, `Annie`) + a base pitch, pitch range and speaking rate. Two speakers
with the same (voice, variant) but other prosody sound alike, so the world partitions (voice, variant) pairs,
not whole speakers, between pretraining and held-out tasks.

eSpeak keeps global state that carries over from one utterance to the next; `espeak_server.py` (one small
child process per process that speaks) isolates every utterance so the world is reproducible.
"""
import atexit
import dataclasses
import functools
import json
import os
import struct
import subprocess
import sys
from math import gcd

import numpy as np
import scipy.signal

_RAND_SEED = 12345  # eSpeak's noise generator seed, the same for every utterance.


@dataclasses.dataclass(frozen=True)
class Language:
  code: str  # Label used by the language task (ISO 639 or eSpeak code).
  name: str
  voices: tuple[str, ...]  # eSpeak voices (accents) that speak it.
  words: tuple[str, ...]  # Common words in the language's own script; numbers are spoken natively too.


def _load_languages(role: str) -> tuple[Language, ...]:
  """The languages of `role` in languages.json: "task" (the language-identification task's classes, also
  heard in pretraining) or "extra" (pretraining only, for more phonetic variety than the task needs)."""
  with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "languages.json"), encoding="utf-8") as f:
    table = json.load(f)
  return tuple(Language(e["code"], e["name"], tuple(e["voices"]), tuple(e["words"])) for e in table[role])


# The tables are data (languages.json): a language is added there, with its voices and words.
TASK_LANGUAGES = _load_languages("task")
EXTRA_LANGUAGES = _load_languages("extra")
ALL_LANGUAGES = TASK_LANGUAGES + EXTRA_LANGUAGES
LANGUAGE_BY_CODE = {lang.code: lang for lang in ALL_LANGUAGES}

# Keyword spotting in the style of Speech Commands: ten commands and an "unknown word" class.
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_KEYWORD = "_unknown_"
UNKNOWN_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "bed",
                 "bird", "cat", "dog", "happy", "house", "tree", "wow", "learn", "follow", "forward",
                 "backward", "visual", "sheila", "marvin")

# eSpeak voice variants (files in espeak-ng-data/voices/!v) that sound like people: robots, whispers,
# croaks and the variants that force their own language are left out.
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
            "klatt3", "adam", "Alicia", "Andrea", "Andy", "Annie", "anika", "antonio", "aunty", "belinda",
            "benjamin", "boris", "caleb", "david", "Denis", "ed", "edward", "gustave", "grandma", "grandpa",
            "Henrique", "Hugo", "iven", "john", "Lee", "linda", "Marco", "max", "michel", "Michael",
            "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert", "sandro", "shelby",
            "steph", "travis", "victor", "zac")


@dataclasses.dataclass(frozen=True)
class Speaker:
  """One synthetic person: what eSpeak is told before every utterance."""
  language: str  # Language code (Language.code).
  voice: str  # eSpeak voice, e.g. "en-GB-scotland".
  variant: str  # eSpeak variant, e.g. "m3".
  pitch: int  # Base pitch, eSpeak scale 0..100.
  pitch_range: int  # Intonation range, 0 (monotone) .. 100.
  rate: int  # Words per minute, 80..450.

  @property
  def name(self) -> str:
    return f"{self.voice}+{self.variant}/p{self.pitch}/r{self.pitch_range}/w{self.rate}"

  @property
  def voice_variant(self) -> tuple[str, str]:
    return (self.voice, self.variant)


def random_speaker(rng: np.random.Generator, language: str, voice: str, variant: str) -> Speaker:
  """Samples prosody for a (voice, variant): spread wide enough that speakers are distinguishable."""
  return Speaker(language=language, voice=voice, variant=variant, pitch=int(rng.integers(20, 81)),
                 pitch_range=int(rng.integers(20, 91)), rate=int(rng.integers(120, 221)))


def utterance_prosody(rng: np.random.Generator, speaker: Speaker) -> Speaker:
  """The speaker as heard in one utterance: people never say two things at exactly the same pitch and pace,
  so pitch, range and rate vary a little around the speaker's own (identity stays the speaker's)."""
  return dataclasses.replace(
      speaker, pitch=int(np.clip(speaker.pitch + rng.integers(-6, 7), 0, 100)),
      pitch_range=int(np.clip(speaker.pitch_range + rng.integers(-10, 11), 0, 100)),
      rate=int(np.clip(round(speaker.rate * rng.uniform(0.9, 1.1)), 80, 450)))


def random_phrase(rng: np.random.Generator, language: str, max_tokens: int = 4) -> str:
  """2..max_tokens tokens: common words, and numbers that eSpeak reads out in the language itself."""
  words = LANGUAGE_BY_CODE[language].words
  tokens = []
  for _ in range(int(rng.integers(2, max_tokens + 1))):
    if rng.random() < 0.35:
      tokens.append(str(int(rng.integers(1, 1000))))
    else:
      tokens.append(words[int(rng.integers(len(words)))])
  return " ".join(tokens)


class _Engine:
  """Client of this process's eSpeak NG server (`espeak_server.py`, a lean child process that speaks every
  utterance in a fresh fork of itself, so that an utterance never depends on those spoken before it).
  One request at a time: not for concurrent use from several threads."""

  def __init__(self):
    import espeakng_loader  # Deferred: a native library and voices that only the speech renderer loads.
    self.data_path = espeakng_loader.get_data_path()
    self.library_path = espeakng_loader.get_library_path()
    self.variants = frozenset(os.listdir(os.path.join(self.data_path, "voices", "!v")))
    self.voices = frozenset(name.lower() for _, _, files in os.walk(os.path.join(self.data_path, "lang"))
                            for name in files)
    server = os.path.join(os.path.dirname(os.path.abspath(__file__)), "espeak_server.py")
    # -S -E: no site packages or PYTHON* variables: the server needs only the standard library.
    self._process = subprocess.Popen([sys.executable, "-S", "-E", server, self.library_path, self.data_path],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    hello = self._receive()
    if hello is None or hello[:2] != b"OK":
      detail = hello[2:].decode(errors="replace") if hello else "no answer"
      raise RuntimeError(f"eSpeak NG server failed to start ({self.library_path}): {detail}")
    (self.native_rate,) = struct.unpack("<I", hello[2:6])
    atexit.register(self.close)

  def _receive(self) -> bytes | None:
    header = self._process.stdout.read(4)
    if len(header) < 4:
      return None
    (length,) = struct.unpack("<I", header)
    return self._process.stdout.read(length)

  def close(self):
    if self._process.poll() is None:
      try:
        self._process.stdin.write(struct.pack("<I", 0))
        self._process.stdin.close()
        self._process.wait(timeout=5)
      except (OSError, subprocess.TimeoutExpired):
        self._process.kill()

  def _validate(self, speaker: Speaker):
    if speaker.voice.lower() not in self.voices:
      raise ValueError(f"speaker.voice={speaker.voice!r} is not an eSpeak voice in {self.data_path}/lang")
    if speaker.variant not in self.variants:
      # eSpeak silently ignores an unknown variant, which would merge two "different" speakers.
      raise ValueError(f"speaker.variant={speaker.variant!r} is not an eSpeak variant in {self.data_path}")

  def synthesize(self, speaker: Speaker, text: str) -> np.ndarray:
    """-> int16[samples] at `native_rate`; the same for the same arguments, whatever was spoken before."""
    self._validate(speaker)
    request = json.dumps({"voice": f"{speaker.voice}+{speaker.variant}", "rate": speaker.rate,
                          "pitch": speaker.pitch, "range": speaker.pitch_range, "seed": _RAND_SEED,
                          "text": text}).encode("utf-8")
    try:
      self._process.stdin.write(struct.pack("<I", len(request)) + request)
      self._process.stdin.flush()
      reply = self._receive()
    except OSError as e:
      reply = None
      detail = str(e)
    else:
      detail = "it exited"
    if not reply:
      raise RuntimeError(f"eSpeak NG server stopped ({detail}) while {speaker.name} said {text!r}")
    if reply[:1] == b"\1":
      raise RuntimeError(f"eSpeak failed for {speaker.name} saying {text!r}: {reply[1:].decode()}")
    return np.frombuffer(reply[1:], "<i2").astype(np.int16)


@functools.cache
def engine() -> _Engine:
  return _Engine()


def trim_silence(x: np.ndarray, threshold: float = 0.01) -> np.ndarray:
  """Cuts leading/trailing samples below `threshold` * peak, so an utterance starts where it is placed."""
  if x.size == 0:
    return x
  loud = np.flatnonzero(np.abs(x) > threshold * np.abs(x).max())
  if loud.size == 0:
    return x[:0]
  return x[loud[0]:loud[-1] + 1]


def synthesize(speaker: Speaker, text: str, sample_rate: int = 16000) -> np.ndarray:
  """Speaks `text` -> f32[samples] at `sample_rate`, peak-normalised to 1, silence trimmed."""
  eng = engine()
  pcm = eng.synthesize(speaker, text).astype(np.float64) / 32768.0
  if eng.native_rate != sample_rate:
    g = gcd(eng.native_rate, sample_rate)
    pcm = scipy.signal.resample_poly(pcm, sample_rate // g, eng.native_rate // g)
  pcm = trim_silence(pcm)
  peak = np.abs(pcm).max() if pcm.size else 0.0
  if peak == 0:
    raise RuntimeError(f"eSpeak produced silence for {speaker.name} saying {text!r}")
  return (pcm / peak).astype(np.float32)


def speak_within(rng: np.random.Generator, speaker: Speaker, max_seconds: float, sample_rate: int,
                 max_tokens: int = 4) -> tuple[np.ndarray, str]:
  """A random phrase in the speaker's language that lasts at most `max_seconds` -> (f32[samples], text).

  Shorter phrases are tried when one runs long; as a last resort the audio is cut with a 20 ms fade.
  """
  limit = int(max_seconds * sample_rate)
  words = LANGUAGE_BY_CODE[speaker.language].words
  text, audio = "", np.zeros(0, np.float32)
  for tokens in range(max_tokens, 0, -1):
    if tokens >= 2:
      text = random_phrase(rng, speaker.language, max_tokens=tokens)
    else:
      text = words[int(rng.integers(len(words)))]
    audio = synthesize(speaker, text, sample_rate)
    if audio.size <= limit:
      return audio, text
  audio = audio[:limit].copy()
  fade = min(limit, int(0.02 * sample_rate))
  audio[limit - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
  return audio, text
