"""Sound and picture synthesis for the embedded audio-visual world.

Every generator here is a pure function of its arguments and a `numpy.random.Generator`, so that the world
is reproducible from one seed no matter which worker process renders which clip:

- `speech`: eSpeak NG voices (many languages, voice variants, pitch and rate) through ctypes, each utterance
  spoken by `espeak_server` in a fresh fork so that none depends on those before it.
- `music`: General MIDI instruments, drum kits and sound effects from the TimGM6mb soundfont that ships with
  pretty_midi, rendered by tinysoundfont; instrument families as NSynth's over GM program groups.
- `events`: the sound-event vocabulary (speech, instrument families, drums, GM effects, beeps, sirens) and a
  renderer per event class.
- `acoustics`: loudness envelopes, mixing, background noise at a given SNR, reverberation, gain.
- `video`: 64x64 frames in which each source has a visual identity that pulses with its own loudness.
- `scene`: one clip from a list of sources: timeline, nuisance, frames.
"""
