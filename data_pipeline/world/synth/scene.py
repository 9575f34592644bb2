"""A clip from a list of sound sources: audio on a shared timeline, nuisance, and frames that show it.

`Source` says *what* sounds (a speaker saying a phrase or a word, an instrument, a sound event);
`render_scene` decides *when* and *how loud*, adds the room, the noise and the recording level, and draws the
frames from each source's own loudness envelope (computed before noise and reverberation: the picture shows
the sources, not the microphone).
"""
import dataclasses

import numpy as np

from data_pipeline.world.synth import acoustics, events, music, speech, video


@dataclasses.dataclass(frozen=True)
class Source:
  """kind: "speech" (speaker, optional text; random phrase when empty), "word" (speaker says `text`, whose
  written form is shown), "program" (GM melodic program) or "event" (non-speech event class `name`)."""
  kind: str
  speaker: speech.Speaker | None = None
  text: str = ""
  program: int = -1
  name: str = ""
  gain_db: float | None = None  # Level relative to the lead source (None: the scene chooses).


@dataclasses.dataclass(frozen=True)
class Nuisance:
  """Ranges of the recording conditions sampled per clip."""
  snr_db: tuple[float, float] = (5.0, 30.0)  # Background noise level below the sources.
  reverb_probability: float = 0.5
  rt60_s: tuple[float, float] = (0.15, 0.6)
  hum_probability: float = 0.15
  level_dbfs: tuple[float, float] = (-32.0, -14.0)  # Random recording gain (RMS of the result).


@dataclasses.dataclass
class RenderedScene:
  audio: np.ndarray  # f32[samples] in [-1, 1].
  frames: list[bytes]  # JPEG, one per frame.
  envelopes: np.ndarray  # f32[sources, frames] in [0, 1]: each source's loudness per frame (as drawn).
  texts: list[str]  # What each source said ("" for non-speech).
  programs: list[int]  # GM program per source (-1 where none).


def _dry_audio(rng: np.random.Generator, source: Source, max_seconds: float, sample_rate: int):
  """-> (f32[samples] peak-normalised, text, program)."""
  if source.kind == "speech":
    speaker = speech.utterance_prosody(rng, source.speaker)
    if source.text:
      return speech.synthesize(speaker, source.text, sample_rate), source.text, -1
    audio, text = speech.speak_within(rng, speaker, max_seconds, sample_rate)
    return audio, text, -1
  if source.kind == "word":
    audio = speech.synthesize(speech.utterance_prosody(rng, source.speaker), source.text, sample_rate)
    return audio[:int(max_seconds * sample_rate)], source.text, -1
  if source.kind == "program":
    return music.render_phrase(rng, source.program, max_seconds, sample_rate), "", source.program
  if source.kind == "event":
    audio, program = events.render_event(rng, source.name, max_seconds, sample_rate)
    return audio, "", -1 if program is None else program
  raise ValueError(f"source.kind={source.kind!r}: expected speech, word, program or event")


def sprite_for(source: Source, program: int) -> video.Sprite:
  """The visual identity of a source: fixed per speaker / program / event class."""
  if source.kind in ("speech", "word"):
    spk = source.speaker
    return video.Sprite("avatar", hue=video.stable_unit("voice", *spk.voice_variant),
                        accent_hue=video.stable_unit("speaker", spk.name),
                        text=source.text if source.kind == "word" else "")
  if source.kind == "program" or (source.kind == "event" and source.name in music.FAMILY_PROGRAMS):
    shape = music.FAMILY_OF_PROGRAM.get(program, "note")
    return video.Sprite(shape, hue=video.stable_unit("program", program),
                        accent_hue=video.stable_unit("program-accent", program))
  return video.Sprite(source.name, hue=video.stable_unit("event", source.name),
                      accent_hue=video.stable_unit("event-accent", source.name))


def context_of(sources: list[Source]) -> str:
  """Background context: the language of the (first) speech, else a stage for music, else outdoors."""
  for s in sources:
    if s.kind in ("speech", "word"):
      return f"lang:{s.speaker.language}"
  if any(s.kind == "program" or (s.kind == "event" and s.name in music.FAMILY_PROGRAMS) for s in sources):
    return "stage"
  return "outdoors"


def render_scene(rng: np.random.Generator, sources: list[Source], *, clip_seconds: float = 3.0,
                 sample_rate: int = 16000, fps: float = 10.0, frame_size: int = 64,
                 nuisance: Nuisance = Nuisance()) -> RenderedScene:
  """Renders `sources` into one clip of `clip_seconds`."""
  if not sources:
    raise ValueError("sources is empty: a clip needs at least one sound source")
  n = int(round(clip_seconds * sample_rate))
  num_frames = int(round(clip_seconds * fps))
  margin = 0.1
  placed, texts, programs, sprites = [], [], [], []
  for i, source in enumerate(sources):
    # A lone source may fill the clip; in a mixture each source takes a random stretch of it.
    max_seconds = clip_seconds - 2 * margin if len(sources) == 1 else \
        float(rng.uniform(min(1.2, clip_seconds - 2 * margin), clip_seconds - 2 * margin))
    dry, text, program = _dry_audio(rng, source, max_seconds, sample_rate)
    dry = dry[:n - 2 * int(margin * sample_rate)]
    start = int(rng.integers(int(margin * sample_rate), n - int(margin * sample_rate) - dry.size + 1))
    track = np.zeros(n, np.float32)
    track[start:start + dry.size] = dry / (acoustics.rms(dry) + 1e-9)
    # The first source leads; unless told otherwise, the others sit up to 8 dB below it.
    if source.gain_db is not None:
      gain_db = source.gain_db
    else:
      gain_db = 0.0 if i == 0 else float(rng.uniform(-8.0, 0.0))
    placed.append(track * np.float32(10 ** (gain_db / 20)))
    texts.append(text)
    programs.append(program)
    sprites.append(sprite_for(source, program))
  env = np.stack([acoustics.frame_envelope(t, sample_rate, fps, num_frames) for t in placed])
  env = env / (env.max(axis=1, keepdims=True) + 1e-9)
  env = np.sqrt(env)  # Perceived loudness grows slower than amplitude; keeps quiet notes visible.
  mix = np.sum(placed, axis=0)
  if rng.random() < nuisance.reverb_probability:
    ir = acoustics.room_impulse_response(rng, sample_rate, float(rng.uniform(*nuisance.rt60_s)))
    mix = acoustics.reverberate(mix, ir)
  noise = acoustics.colored_noise(rng, n, float(rng.uniform(0.0, 2.0)))
  if rng.random() < nuisance.hum_probability:
    noise = noise + acoustics.hum(n, sample_rate, float(rng.choice([50.0, 60.0])), rng)
  mix = acoustics.add_noise(mix, noise, float(rng.uniform(*nuisance.snr_db)))
  audio = acoustics.set_level(mix, float(rng.uniform(*nuisance.level_dbfs)))
  frames = video.render_frames(sprites, env, context_of(sources), rng, size=frame_size, fps=fps)
  return RenderedScene(audio=audio, frames=frames, envelopes=env.astype(np.float32), texts=texts,
                       programs=programs)
