"""avcl.embed on files the test writes: several formats, rates and channel counts, bad inputs, a 10-minute
file; the numbers equal avcl.hear's on the same audio."""
import io
import json
import os
import shutil
import sys
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr

from avcl import embed, hear
from data_pipeline import audio_files, paths
from tests.encoder_fixtures import tiny_workdir  # noqa: F401  (a fixture)
from tests.video_files import make_video

tf = hear.tf
SR = 16000


def tone(freq, seconds, rate, amp=0.3):
  t = np.arange(int(round(seconds * rate))) / rate
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(x, rate):
  spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
  return np.argmax(spec) * rate / x.size


@pytest.fixture(scope="module")
def model(tiny_workdir):  # pylint: disable=redefined-outer-name
  """A tiny encoder's workdir (a real orbax checkpoint) and its avcl.hear module."""
  module, _ = embed.load_module(workdir=tiny_workdir)
  return tiny_workdir, module


# name: (frequency of the tone (Hz), seconds, rate, channels) for the good files; each written below.
GOOD = {
    "a_stereo44k.wav": (440.0, 2.3, 44100, 2),
    "b_mono16k.flac": (300.0, 3.0, 16000, 1),
    "c_mono22k.ogg": (1000.0, 1.2, 22050, 1),
    "d_stereo48k.mp3": (700.0, 2.0, 48000, 2),
    "e_quad48k.wav": (500.0, 1.7, 48000, 4),
    "f_short8k.wav": (200.0, 0.1, 8000, 1),  # Shorter than a window (1 s) and a timestamp hop's worth.
    "g_aac32k.m4a": (440.0, 1.5, 32000, 2),  # AAC in MP4 without video, PyAV only.
    "h_video.mp4": (440.0, 1.0, 48000, 2),  # The audio track of a video (H.264 + AAC).
}
BAD = {
    "x_corrupt.wav": "unreadable", "x_empty.flac": "empty", "x_noframes.wav": "empty",
    "x_noaudio.mkv": "no_audio", "x_nan.wav": "non_finite",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("audio")
  for name, (freq, secs, rate, ch) in GOOD.items():
    path = str(d / name)
    if name.endswith((".m4a", ".mp4")):
      tmp = make_video(str(d / (name + ".tmp.mp4")), seconds=secs, sample_rate=rate, channels=ch,
                       video=name.endswith(".mp4"))
      os.replace(tmp, path)
      continue
    x = tone(freq, secs, rate)
    # Channels: the tone, then quieter copies of other tones (the downmix is their mean).
    chans = [x] + [tone(freq * (k + 2), secs, rate, amp=0.05) for k in range(ch - 1)]
    sf.write(path, np.stack(chans, axis=1), rate, subtype="PCM_16" if name.endswith(".wav") else None)
  (d / "x_corrupt.wav").write_bytes(b"RIFF\x00\x01\x00\x00WAVEjunk" + bytes(range(256)) * 8)
  (d / "x_empty.flac").write_bytes(b"")
  sf.write(str(d / "x_noframes.wav"), np.zeros((0, 1), np.float32), SR)
  make_video(str(d / "x_noaudio.mkv"), audio=False)
  nan = tone(100, 1.0, SR)
  nan[9000] = np.nan
  sf.write(str(d / "x_nan.wav"), nan, SR, subtype="FLOAT")
  (d / "notes.txt").write_text("not audio")  # Not an audio extension: a folder search leaves it out.
  return d


def test_decoding_formats_rates_and_channels(files):
  """Each format decodes to the tone it holds, at 16 kHz, with the right length; the PCM file exactly as an
  independent one-shot read, downmix and resampling."""
  for name, (freq, secs, _, _) in GOOD.items():
    x = audio_files.load_audio(str(files / name), SR)
    assert abs(x.size / SR - secs) < 0.08, (name, x.size / SR)  # Lossy codecs add up to ~50 ms of priming.
    assert abs(peak_hz(x, SR) - freq) < 3.0, (name, peak_hz(x, SR))
    assert 0.02 < np.sqrt(np.mean(x ** 2)) < 0.3, name
  ref, rate = sf.read(str(files / "a_stereo44k.wav"), dtype="float32")
  ref = soxr.resample(ref.mean(axis=1, dtype=np.float32), rate, SR, quality="HQ")
  np.testing.assert_allclose(audio_files.load_audio(str(files / "a_stereo44k.wav"), SR), ref, atol=1e-6)
  # A 16 kHz file is not resampled: its samples are the file's.
  np.testing.assert_array_equal(audio_files.load_audio(str(files / "b_mono16k.flac"), SR),
                                sf.read(str(files / "b_mono16k.flac"), dtype="float32")[0])


def test_same_numbers_as_hear_and_skips_with_reasons(model, files, tmp_path, capsys):
  workdir, module = model
  out = str(tmp_path / "out")
  code = embed.main(["--workdir", workdir, "--input", str(files), str(files / "missing.wav"),
                     "--output", out, "--timestamps", "--batch-size", "5", "--index-format", "csv"])
  assert code == 0
  assert "embedded 8 of 14 files" in capsys.readouterr().out
  rows = embed.read_index(out)
  assert [os.path.basename(r["path"]) for r in rows] == sorted(GOOD) + sorted(BAD) + ["missing.wav"]
  by_name = {os.path.basename(r["path"]): r for r in rows}
  for name, reason in list(BAD.items()) + [("missing.wav", "missing")]:
    r = by_name[name]
    assert (r["status"], r["reason"], r["scene_row"]) == ("skipped", reason, -1), r
    assert r["detail"]
  scene = np.load(os.path.join(out, "scene.npy"))
  ts = np.load(os.path.join(out, "timestamps.npy"))
  ms = np.load(os.path.join(out, "timestamps_ms.npy"))
  info = json.loads(open(os.path.join(out, "embed.json")).read())
  assert scene.shape == (8, module.scene_embedding_size) == (8, info["embedding_size"])
  assert ts.shape == (sum(r["timestamps_count"] for r in rows), 512) and ms.shape == ts.shape[:1]
  assert info["skipped_by_reason"] == {"unreadable": 1, "empty": 2, "no_audio": 1, "non_finite": 1, "missing": 1}
  for name, (_, _, rate, ch) in GOOD.items():
    r = by_name[name]
    assert r["status"] == "ok" and r["input_sample_rate"] == rate and r["input_channels"] == ch, r
    audio = audio_files.load_audio(r["path"], SR)
    assert r["windows"] == embed.scene_window_count(audio.size, SR, SR // 2)
    ref = hear.get_scene_embeddings(audio[None], module).numpy()[0]
    np.testing.assert_allclose(scene[r["scene_row"]], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    emb, t = hear.get_timestamp_embeddings(audio[None], module)
    s, k = r["timestamps_start"], r["timestamps_count"]
    assert k == emb.shape[1] == audio.size // 800 + 1
    np.testing.assert_allclose(ts[s:s + k], emb.numpy()[0], rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_allclose(ms[s:s + k], t.numpy()[0], atol=1e-3)
  # The files differ, so do their embeddings (a model that ignored its input would fail here).
  assert np.min(np.linalg.norm(scene[:, None] - scene[None], axis=-1) + np.eye(8) * 1e9) > 1e-3


@pytest.mark.slow
def test_ten_minute_file_streams_in_bounded_memory(model, tmp_path):
  """A 10-minute 44.1 kHz stereo file: numpy memory stays far below the decoded file's, numbers equal hear."""
  _, module = model
  path = str(tmp_path / "long.wav")
  rate, secs = 44100, 600
  rng = np.random.default_rng(0)
  with sf.SoundFile(path, "w", rate, 2, subtype="PCM_16") as f:
    for minute in range(10):  # Written a minute at a time: a tone whose pitch changes every minute.
      x = tone(200 + 100 * minute, 60, rate, amp=0.3) + 0.02 * rng.standard_normal(60 * rate).astype(np.float32)
      f.write(np.stack([x, x[::-1]], axis=1))
  sf.write(str(tmp_path / "one_minute.wav"), sf.read(path, frames=60 * rate, dtype="int16")[0], rate)
  sf.write(str(tmp_path / "one_second.wav"), sf.read(path, frames=rate, dtype="int16")[0], rate)
  whole_input = secs * rate * 2 * 4  # f32 samples of the file as one array: 212 MB.

  def peak_memory(p, out):
    tracemalloc.start()
    info = embed.embed_files(module, [p], str(tmp_path / out), timestamps=True, progress=False,
                             index_format="csv")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return info, peak

  # The first call also traces the TensorFlow functions (a one-off cost in Python memory): not measured.
  peak_memory(str(tmp_path / "one_second.wav"), "warm")
  peak_short = peak_memory(str(tmp_path / "one_minute.wav"), "short")[1]
  info, peak = peak_memory(path, "out")
  assert info["embedded"] == 1 and abs(info["audio_seconds"] - secs) < 1e-3
  # Ten times the audio, not more memory: what numpy holds at once is a few blocks and a batch, not the file
  # (measured: 13.6 MiB for the minute, 13.9 MiB for the ten minutes).
  assert peak < 1.1 * peak_short + 2**20, (peak / 2**20, peak_short / 2**20)
  assert peak < whole_input / 12, f"peak numpy/Python memory {peak / 2**20:.1f} MiB"
  audio = audio_files.load_audio(path, SR)
  ref = hear.get_scene_embeddings(audio[None], module).numpy()[0]
  scene = np.load(str(tmp_path / "out" / "scene.npy"))[0]
  np.testing.assert_allclose(scene, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
  ts = np.load(str(tmp_path / "out" / "timestamps.npy"), mmap_mode="r")
  assert ts.shape == (secs * SR // 800 + 1, 512)
  # The minute boundaries: rows there equal hear's on a 3 s excerpt with the same context (zero-padding
  # only at the file's ends, so an excerpt's interior rows are the file's).
  for minute in (1, 5, 9):
    c = minute * 60 * SR
    excerpt = audio[c - 2 * SR:c + SR]
    emb, _ = hear.get_timestamp_embeddings(excerpt[None], module)
    rows = ts[(c - SR) // 800:(c + SR // 2) // 800]
    np.testing.assert_allclose(rows, emb.numpy()[0][SR // 800:(SR * 5 // 2) // 800], rtol=1e-5,
                               atol=1e-5 * np.abs(ref).max())


def test_url_input_and_output_parquet(model, files):
  """Reading from and writing to a URL (TensorFlow's ram:// file system standing in for gs://), Parquet."""
  _, module = model
  src = "ram://avcl-embed-test/in/a.wav"
  paths.makedirs("ram://avcl-embed-test/in")
  paths.write_bytes(src, (files / "a_stereo44k.wav").read_bytes())
  out = "ram://avcl-embed-test/out"
  info = embed.embed_files(module, audio_files.list_inputs(["ram://avcl-embed-test/in"]), out, progress=False,
                           index_format="parquet")
  assert info["embedded"] == 1 and info["index"] == "index.parquet"
  rows = embed.read_index(out)
  assert rows[0]["path"] == src and rows[0]["status"] == "ok" and rows[0]["input_sample_rate"] == 44100
  scene = np.load(io.BytesIO(paths.read_bytes(paths.join(out, "scene.npy"))))
  ref = hear.get_scene_embeddings(audio_files.load_audio(str(files / "a_stereo44k.wav"), SR)[None], module).numpy()
  np.testing.assert_allclose(scene, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_cli_errors(model, files, tmp_path, capsys, monkeypatch):
  workdir, _ = model
  empty = tmp_path / "nothing"
  empty.mkdir()
  assert embed.main(["--workdir", workdir, "--input", str(empty), "--output", str(tmp_path / "o")]) == 1
  assert f"--input {str(empty)!r}: no audio or video files" in capsys.readouterr().err
  assert embed.main(["--saved-model", workdir, "--input", str(files), "--output", str(tmp_path / "o")]) == 1
  assert "holds no saved_model.pb" in capsys.readouterr().err
  assert embed.main(["--workdir", str(tmp_path / "nope"), "--input", str(files), "--output", "o"]) == 1
  assert "does not exist" in capsys.readouterr().err
  with pytest.raises(SystemExit):  # No model flag: argparse's usage error.
    embed.main(["--input", str(files), "--output", str(tmp_path / "o")])
  out = tmp_path / "o2"
  args = ["--workdir", workdir, "--input", str(files / "b_mono16k.flac"), "--output", str(out), "--no-progress",
          "--index-format", "csv"]
  assert embed.main(args + ["--timestamps"]) == 0
  assert embed.main(args) == 1
  assert "already holds index.csv, embed.json" in capsys.readouterr().err
  assert embed.main(args + ["--overwrite"]) == 0
  assert not (out / "timestamps.npy").exists()  # The earlier run's files are gone, not left inconsistent.
  monkeypatch.setitem(sys.modules, "pyarrow", None)  # As if pyarrow were not installed.
  with pytest.raises(SystemExit) as e:
    embed.main(args + ["--overwrite", "--index-format", "parquet"])
  assert e.value.code == 1
  assert capsys.readouterr().err.splitlines() == [
      "error: python -m avcl.embed --index-format parquet needs the package pyarrow, which is not installed: "
      "pip install pyarrow"]
  scene = np.load(out / "scene.npy")
  shutil.rmtree(out)
  # A checkpoint directory names the same model; auto without pyarrow: CSV.
  assert embed.main(["--checkpoint", os.path.join(workdir, "checkpoints", "7")] + args[2:-2]
                    + ["--index-format", "auto"]) == 0
  assert (out / "index.csv").exists() and not (out / "index.parquet").exists()
  np.testing.assert_array_equal(np.load(out / "scene.npy"), scene)
  assert embed.main(["--checkpoint", workdir] + args[2:] + ["--overwrite"]) == 1
  assert "is not a WORKDIR/checkpoints/<step> directory" in capsys.readouterr().err
