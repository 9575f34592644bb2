"""Synthesisers of the embedded world, against independent numpy (float64) references and invariances."""
import io

import numpy as np
import pytest
from PIL import Image

from data_pipeline.world.synth import acoustics, events, music, scene, speech, video

SR = 16000


def test_frame_envelope_matches_numpy_reference():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(SR * 3 - 77).astype(np.float32)  # Not a whole number of frames: zero-padded.
  env = acoustics.frame_envelope(x, SR, 10.0, 30)
  padded = np.zeros(SR * 3)
  padded[:x.size] = x
  ref = np.sqrt((padded.reshape(30, 1600).astype(np.float64) ** 2).mean(axis=1))
  np.testing.assert_allclose(env, ref, rtol=1e-5)


@pytest.mark.parametrize("snr_db", [0.0, 7.5, 30.0])
def test_add_noise_reaches_the_requested_snr(snr_db):
  rng = np.random.default_rng(1)
  signal = np.sin(np.arange(SR) / 7.0).astype(np.float32)
  noise = rng.standard_normal(SR).astype(np.float32)
  mixed = acoustics.add_noise(signal, noise, snr_db)
  added = mixed.astype(np.float64) - signal
  measured = 20 * np.log10(np.sqrt(np.mean(signal.astype(np.float64) ** 2)) / np.sqrt(np.mean(added ** 2)))
  assert measured == pytest.approx(snr_db, abs=1e-3)
  with pytest.raises(ValueError, match="silent"):
    acoustics.add_noise(signal, np.zeros_like(noise), 10.0)
  with pytest.raises(ValueError, match="shape"):
    acoustics.add_noise(signal, noise[:10], 10.0)


def test_set_level_sets_rms_without_clipping():
  x = np.random.default_rng(2).standard_normal(SR).astype(np.float32) * 0.01
  y = acoustics.set_level(x, -20.0)
  assert 20 * np.log10(acoustics.rms(y)) == pytest.approx(-20.0, abs=1e-3)
  spiky = np.zeros(SR, np.float32)
  spiky[100] = 1.0
  z = acoustics.set_level(spiky, -3.0)  # Would need a peak far above 1: lowered instead of clipped.
  assert np.abs(z).max() == pytest.approx(0.99) and np.count_nonzero(z) == 1


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_colored_noise_has_unit_rms_and_its_spectral_slope(exponent):
  x = acoustics.colored_noise(np.random.default_rng(3), 1 << 16, exponent)
  assert acoustics.rms(x) == pytest.approx(1.0, rel=1e-4)
  power = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
  freqs = np.fft.rfftfreq(x.size)
  band = (freqs > 0.002) & (freqs < 0.4)
  slope = np.polyfit(np.log(freqs[band]), np.log(power[band]), 1)[0]
  assert slope == pytest.approx(-exponent, abs=0.1)


def test_room_impulse_response_decays_by_60_db_at_rt60():
  ir = acoustics.room_impulse_response(np.random.default_rng(4), SR, 0.4).astype(np.float64)
  assert ir[0] == 1.0 and ir.size >= int(0.4 * SR)
  tail = ir[1:]
  early = np.sqrt(np.mean(tail[int(0.02 * SR):int(0.06 * SR)] ** 2))
  late = np.sqrt(np.mean(tail[int(0.34 * SR):int(0.38 * SR)] ** 2))
  # -60 dB over 0.4 s is -48 dB over the 0.32 s between the windows' centres.
  assert 20 * np.log10(late / early) == pytest.approx(-48, abs=6)


def test_speech_is_16khz_deterministic_and_follows_prosody():
  spk = speech.Speaker("en", "en-US", "m3", pitch=50, pitch_range=50, rate=170)
  a = speech.synthesize(spk, "stop the music now")
  speech.synthesize(speech.Speaker("de", "de", "klatt2", 30, 60, 200), "guten Morgen")
  b = speech.synthesize(spk, "stop the music now")
  assert a.dtype == np.float32 and np.array_equal(a, b)  # Nothing carries over between utterances.
  assert np.abs(a).max() == pytest.approx(1.0)
  assert 0.5 < a.size / SR < 2.5
  fast = speech.synthesize(dataclass_replace(spk, rate=300), "stop the music now")
  assert fast.size < 0.8 * a.size
  other = speech.synthesize(dataclass_replace(spk, variant="f2"), "stop the music now")
  assert other.size != a.size or not np.allclose(other, a)


def dataclass_replace(obj, **kw):
  import dataclasses
  return dataclasses.replace(obj, **kw)


def test_speech_resamples_from_espeak_native_rate():
  spk = speech.Speaker("fr", "fr", "m1", 50, 50, 170)
  native = speech.engine().synthesize(spk, "bonjour")
  trimmed_native = speech.trim_silence(native.astype(np.float64))
  ours = speech.synthesize(spk, "bonjour", SR)
  assert speech.engine().native_rate == 22050
  assert ours.size / SR == pytest.approx(trimmed_native.size / 22050, abs=0.01)


def test_speech_bad_input_is_named():
  with pytest.raises(ValueError, match="variant"):
    speech.synthesize(speech.Speaker("en", "en", "nosuchvariant", 50, 50, 170), "hi")
  with pytest.raises(ValueError, match="voice"):
    speech.synthesize(speech.Speaker("en", "xx-nope", "m1", 50, 50, 170), "hi")


def test_every_language_and_variant_is_known_to_espeak():
  eng = speech.engine()
  for lang in speech.ALL_LANGUAGES:
    assert len(lang.words) >= 10
    for voice in lang.voices:
      eng._validate(speech.Speaker(lang.code, voice, "m1", 50, 50, 170))
  assert set(speech.VARIANTS) <= eng.variants
  rng = np.random.default_rng(5)
  for lang in speech.TASK_LANGUAGES:
    spk = speech.random_speaker(rng, lang.code, lang.voices[0], "f1")
    audio, text = speech.speak_within(rng, spk, 2.8, SR)
    assert text and 0.1 < audio.size / SR <= 2.8


def test_music_families_and_rendering():
  all_programs = [p for progs in music.FAMILY_PROGRAMS.values() for p in progs]
  assert len(all_programs) == len(set(all_programs))  # Families are disjoint.
  assert len(music.FAMILIES) == 11
  rng = np.random.default_rng(6)
  first = music.render_phrase(np.random.default_rng(7), 40, 2.5)
  for family in music.FAMILIES:  # Renders in between must not leak into the next phrase.
    x = music.render_phrase(rng, music.FAMILY_PROGRAMS[family][0], 2.5)
    assert x.size <= 2.5 * SR and np.abs(x).max() == pytest.approx(1.0)
  assert np.array_equal(music.render_phrase(np.random.default_rng(7), 40, 2.5), first)
  assert acoustics.rms(music.render_drums(rng, 2.0)) > 0.01
  with pytest.raises(ValueError, match="program"):
    music.render_phrase(rng, 200, 1.0)


def test_every_event_class_sounds_within_its_time():
  rng = np.random.default_rng(8)
  for name in events.SOUND_EVENT_CLASSES:
    if name == events.SPEECH:
      continue
    x, _ = events.render_event(rng, name, 1.5)
    assert x.dtype == np.float32 and 0 < x.size <= 1.5 * SR and acoustics.rms(x) > 1e-3, name
  with pytest.raises(ValueError, match="event name"):
    events.render_event(rng, "speech", 1.0)


def _decode(frames):
  return np.stack([np.asarray(Image.open(io.BytesIO(f)), np.float64) for f in frames])


def test_frames_change_where_the_loudness_changes():
  env = np.zeros((2, 30), np.float32)
  env[0, 10:] = 1.0  # Source 0 starts at frame 10.
  env[1, 20:25] = 1.0  # Source 1 sounds during frames 20..24.
  sprites = [video.Sprite("guitar", 0.3, 0.6), video.Sprite("avatar", 0.1, 0.8, text="go")]
  frames = video.render_frames(sprites, env, "lang:en", np.random.default_rng(9))
  pixels = _decode(frames)
  assert pixels.shape == (30, 64, 64, 3)
  diff = np.abs(np.diff(pixels, axis=0)).mean(axis=(1, 2, 3))  # diff[i]: frame i -> i + 1.
  onsets = {9, 19, 24}
  quiet = [d for i, d in enumerate(diff) if i not in onsets]  # Envelopes constant: drift and noise only.
  assert min(diff[i] for i in onsets) > max(quiet)
  assert min(diff[i] for i in onsets) > 2 * np.median(quiet)
  with pytest.raises(ValueError, match="envelopes"):
    video.render_frames(sprites, env[:1], "stage", np.random.default_rng(0))
  with pytest.raises(ValueError, match="context"):
    video.background("underwater", np.random.default_rng(0), 64)


def test_scene_places_sources_and_draws_them():
  spk = speech.Speaker("en", "en-GB-x-rp", "f3", 55, 50, 160)
  sources = [scene.Source("word", speaker=spk, text="left"), scene.Source("event", name="siren", gain_db=-12.0)]
  out = scene.render_scene(np.random.default_rng(10), sources)
  assert out.audio.shape == (3 * SR,) and out.audio.dtype == np.float32
  assert np.all(np.isfinite(out.audio)) and np.abs(out.audio).max() <= 0.99 + 1e-6
  assert len(out.frames) == 30 and out.envelopes.shape == (2, 30)
  assert out.texts == ["left", ""] and out.envelopes.max() == pytest.approx(1.0)
  assert scene.context_of(sources) == "lang:en"
  with pytest.raises(ValueError, match="sources"):
    scene.render_scene(np.random.default_rng(0), [])
  with pytest.raises(ValueError, match="kind"):
    scene.render_scene(np.random.default_rng(0), [scene.Source("hum")])
