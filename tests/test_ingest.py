"""Ingest of videos made by the tests themselves: skips and reasons, odd inputs, alignment, resume, CSV."""
import functools
import hashlib
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from data_pipeline import ingest, schema
from tests.video_files import make_video
from tests.video_fixtures import EVENTS, GOOD, flash_click_video, video_dir  # noqa: F401  (fixtures)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def decode(jpeg):
  return np.asarray(Image.open(io.BytesIO(jpeg)))


def click_times(audio, sample_rate, threshold=0.3, gap_s=0.3):
  """Onsets (s) of loud bursts separated by at least gap_s."""
  idx = np.flatnonzero(np.abs(audio) > threshold)
  onsets = [i for k, i in enumerate(idx) if k == 0 or i - idx[k - 1] > gap_s * sample_rate]
  return np.asarray(onsets) / sample_rate


def flash_times(frames, fps):
  """Times (s) of frames that turn white after a dark one."""
  bright = np.array([decode(f).mean() > 128 for f in frames])
  return np.flatnonzero(bright & ~np.r_[False, bright[:-1]]) / fps


def test_folder_ingest_counts_skips_and_reasons(video_dir, tmp_path):
  src, expected = video_dir
  out = str(tmp_path / "out")
  m = ingest.ingest(src, out, workers=2, shard_clips=4, progress=False)
  assert m == json.load(open(os.path.join(out, "manifest.json")))
  good = [n for n, r in expected.items() if r is None]
  bad = {os.path.relpath(s["path"], src): s["reason"] for s in m["skipped"]}
  assert bad == {n: r for n, r in expected.items() if r is not None}
  assert all(s["detail"] for s in m["skipped"])
  assert m["inputs"] == len(expected) and m["clips"] == len(good) and m["skipped_count"] == len(bad)
  assert m["skipped_by_reason"] == {r: list(bad.values()).count(r) for r in set(bad.values())}
  assert [os.path.basename(p) for p in m["silent"]] == ["silent.mp4"] and m["silent_clips"] == 1

  clips = {c.video_id: c for c in schema.read_clips(schema.list_shards(out, "train"))}
  assert sorted(clips) == sorted(good)
  total = 0.0
  for name, clip in clips.items():
    seconds = GOOD.get(name, {}).get("seconds", 1.0)
    duration = clip.duration_s
    total += duration
    # Whole file: the overlap of both streams, within a frame of the written length.
    assert abs(duration - seconds) < 0.1, (name, duration)
    assert clip.sample_rate == 16000 and clip.fps == 10.0
    assert clip.audio.dtype == np.float32 and len(clip.audio) == round(duration * 16000)
    assert len(clip.frames) == int(np.ceil(duration * 10 - 1e-6))
    assert np.abs(clip.audio).max() <= 1.0
    assert decode(clip.frames[0]).shape == (64, 64, 3)
    if name == "silent.mp4":
      assert np.abs(clip.audio).max() < 1e-3
    else:
      # The 440 Hz tone survives downmixing (stereo, 5.1) and resampling (8 kHz and 48 kHz to 16 kHz).
      spectrum = np.abs(np.fft.rfft(clip.audio * np.hanning(len(clip.audio))))
      assert abs(np.argmax(spectrum) * 16000 / len(clip.audio) - 440) < 5, name
      rms = np.sqrt(np.mean(clip.audio[400:-400] ** 2))
      assert 0.02 < rms < 0.06, (name, rms)  # Tone 0.05 / sqrt(2) plus a little noise; no +3 dB sum.
  assert abs(m["total_duration_s"] - total) < 1e-2
  # The same clips come out of one in-process worker (parallel decoding changes nothing).
  one = ingest.convert_video(os.path.join(src, "stereo48k.mkv"), None, None, [], ingest.Options(),
                             video_id="stereo48k.mkv")
  np.testing.assert_array_equal(one.audio, clips["stereo48k.mkv"].audio)
  assert one.frames == clips["stereo48k.mkv"].frames


def test_portrait_and_huge_frames_are_centre_cropped(video_dir):
  import av
  # Portrait 40x80: red top quarter, green middle half, blue bottom quarter. A centre crop keeps the green
  # square only (a stretch or a pad would show red, blue or black).
  img = np.zeros([80, 40, 3], np.uint8)
  img[:20, :, 0] = img[20:60, :, 1] = img[60:, :, 2] = 255
  out = decode(ingest._frame_to_jpeg(av.VideoFrame.from_ndarray(img, format="rgb24"), 16, 95))
  assert out.shape == (16, 16, 3)
  np.testing.assert_allclose(out.reshape(-1, 3).mean(0), [0, 255, 0], atol=6)
  src, _ = video_dir
  clip = ingest.convert_video(os.path.join(src, "huge.mp4"), None, None, [], ingest.Options(size=16))
  assert decode(clip.frames[0]).shape == (16, 16, 3)
  assert len(clip.frames) == int(np.ceil(clip.duration_s * 10 - 1e-6))


def test_rotated_phone_video_is_stored_upright(tmp_path):
  """Stored 64x32, red left half, display matrix "rotate 90 degrees counter-clockwise": shown as portrait with
  blue on top and red at the bottom (a phone held upright)."""
  path = make_video(str(tmp_path / "rot.mp4"), width=64, height=32, rotation=90, halves=True)
  img = decode(ingest.convert_video(path, None, None, [], ingest.Options(size=16)).frames[0]).astype(float)
  np.testing.assert_allclose(img[:3].mean(axis=(0, 1)), [0, 0, 255], atol=20)
  np.testing.assert_allclose(img[-3:].mean(axis=(0, 1)), [255, 0, 0], atol=20)


def test_strict_stops_at_first_bad_input(video_dir, tmp_path):
  src, _ = video_dir
  with pytest.raises(ingest.IngestError, match=r"corrupt\.mp4: corrupt"):
    ingest.ingest(src, str(tmp_path), strict=True, workers=1, shard_clips=100, progress=False)


def test_flash_and_click_stay_aligned(flash_click_video):
  clip = ingest.convert_video(flash_click_video, None, None, [], ingest.Options())
  clicks = click_times(clip.audio, clip.sample_rate)
  flashes = flash_times(clip.frames, clip.fps)
  np.testing.assert_allclose(clicks, EVENTS, atol=0.01)
  assert len(flashes) == len(EVENTS)
  # A flash shows in the first stored frame at or after it; never before its click, at most a frame after.
  delay = flashes - clicks
  assert np.all(delay > -0.01) and np.all(delay < 1 / clip.fps + 0.01), delay
  # A span keeps the same alignment (start timestamps are kept, both cut at the same instant).
  part = ingest.convert_video(flash_click_video, 1.0, 2.5, [], ingest.Options(fps=20))
  assert (part.start_us, part.end_us) == (1_000_000, 2_500_000)
  assert len(part.audio) == 24000 and len(part.frames) == 30
  delay = flash_times(part.frames, 20) - click_times(part.audio, 16000)
  assert len(delay) == 2 and np.all(delay > -0.01) and np.all(delay < 1 / 20 + 0.01), delay


def test_csv_spans_labels_vocabulary_and_unreadable(video_dir, tmp_path):
  src, _ = video_dir
  csv_path = tmp_path / "list.csv"
  csv_path.write_text(
      "path,start_s,end_s,labels\n"
      f"{src}/good.mp4,0.2,0.7,dog;cat\n"
      f'{src}/stereo48k.mkv,,,"cat"\n'
      "missing/nothing.mp4,,,dog\n"
      f"{src}/good.mp4,0.8,0.3,dog\n"
      f"{src}/good.mp4,5.0,6.0,dog\n")
  vocab = tmp_path / "vocab.csv"
  vocab.write_text("index,mid,display_name\n0,/m/0bt9lr,dog\n1,/m/01yrx,cat\n")
  out = str(tmp_path / "out")
  m = ingest.ingest(str(csv_path), out, labels_csv=str(vocab), workers=1, progress=False)
  assert m["clips"] == 2 and m["num_classes"] == 2
  assert [s["reason"] for s in m["skipped"]] == ["unreadable", "bad_range", "zero_duration"]
  clips = list(schema.read_clips(schema.list_shards(out, "train")))
  span = clips[0]
  assert (span.start_us, span.end_us) == (200_000, 700_000)
  assert len(span.audio) == 8000 and len(span.frames) == 5
  assert span.label_index == [0, 1] and span.label_string == ["dog", "cat"]
  assert clips[1].label_index == [1] and clips[1].duration_s > 0.9
  assert open(os.path.join(out, "labels.csv")).read().split() == ["0,dog", "1,cat"]
  # A label outside the vocabulary is an error before any work, naming the label.
  csv_path.write_text(f"{src}/good.mp4,,,bird\n")
  with pytest.raises(ingest.IngestError, match="bird"):
    ingest.ingest(str(csv_path), str(tmp_path / "o2"), labels_csv=str(vocab), progress=False)


def convert_and_log(log_dir, job, options):
  """convert_job that leaves a file in `log_dir` per input (workers are other processes: no monkeypatch)."""
  open(os.path.join(log_dir, hashlib.sha1(job.path.encode()).hexdigest()), "w").close()
  return ingest.convert_job(job, options)


def test_resume_keeps_finished_shards(video_dir, tmp_path):
  src, expected = video_dir
  out = str(tmp_path / "out")
  first = ingest.ingest(src, out, workers=1, shard_clips=3, progress=False)
  shards = schema.list_shards(out, "train")
  # Simulate a crash: one shard never renamed into place, a temp file left behind.
  os.remove(shards[1])
  open(shards[1] + ".tmp-123", "wb").write(b"partial")
  before = {p: os.path.getmtime(p) for p in shards if p != shards[1]}
  log_dir = tmp_path / "converted"
  log_dir.mkdir()
  second = ingest.ingest(src, out, workers=1, shard_clips=3, progress=False,
                         convert=functools.partial(convert_and_log, str(log_dir)))
  assert len(os.listdir(log_dir)) == 3  # Only the missing shard's inputs were decoded again.
  assert {p: os.path.getmtime(p) for p in before} == before
  for key in ("clips", "skipped", "silent", "total_duration_s", "shards"):
    assert first[key] == second[key]
  # Same output folder, other options: refused rather than mixing two ingests.
  with pytest.raises(ingest.IngestError, match="other inputs or options"):
    ingest.ingest(src, out, options=ingest.Options(fps=5), workers=1, shard_clips=3, progress=False)


def test_skip_silent(video_dir, tmp_path):
  src, _ = video_dir
  clip = ingest.convert_video(os.path.join(src, "silent.mp4"), None, None, [],
                              ingest.Options(skip_silent=True))
  assert isinstance(clip, ingest.Skip) and clip.reason == "silent"


def test_options_out_of_range_name_the_field():
  with pytest.raises(ValueError, match="size=4"):
    ingest.Options(size=4).validate()


def test_cli_help_and_run(video_dir, tmp_path):
  src, _ = video_dir
  r = subprocess.run([sys.executable, "-m", "data_pipeline.ingest", "--help"], cwd=ROOT, capture_output=True,
                     text=True, check=True)
  assert "--input" in r.stdout and "--strict" in r.stdout and "--skip-silent" in r.stdout
  csv_path = tmp_path / "one.csv"
  csv_path.write_text(f"{src}/good.mp4\n{src}/no_audio.mp4\n")
  r = subprocess.run([sys.executable, "-m", "data_pipeline.ingest", "--input", str(csv_path), "--output",
                      str(tmp_path / "o"), "--workers", "1", "--quiet", "--strict"], cwd=ROOT,
                     capture_output=True, text=True)
  assert r.returncode == 2 and "no_audio" in r.stderr
  # A video (or any binary file) given as --input is named in a clear error, not a codec traceback.
  (tmp_path / "binary.csv").write_bytes(b"\xb9\x00\xff" * 10)
  for path, words in ((f"{src}/good.mp4", "is a video file"), (str(tmp_path / "binary.csv"), "not a UTF-8 CSV")):
    with pytest.raises(ingest.IngestError, match=words):
      ingest.read_inputs(path)


def convert_or_die(job, options):
  """A convert function whose worker process dies on one input (as a segfaulting decoder would)."""
  if os.path.basename(job.path) == "good.mp4":
    os._exit(11)
  return ingest.convert_job(job, options)


def test_a_crashing_decoder_skips_only_its_input(video_dir, tmp_path):
  src, expected = video_dir
  m = ingest.ingest(src, str(tmp_path), workers=2, shard_clips=4, progress=False, convert=convert_or_die)
  crashed = [s for s in m["skipped"] if s["reason"] == "crash"]
  assert [os.path.basename(s["path"]) for s in crashed] == ["good.mp4"] and "died" in crashed[0]["detail"]
  assert m["clips"] == sum(r is None for r in expected.values()) - 1
  assert m["skipped_count"] == sum(r is not None for r in expected.values()) + 1


def test_non_finite_audio_is_skipped_and_the_run_goes_on(video_dir, tmp_path):
  src, _ = video_dir
  nan = make_video(str(tmp_path / "nan.mkv"), audio_codec="pcm_f32le", nan_at=[0.5])
  csv_path = tmp_path / "list.csv"
  csv_path.write_text(f"{src}/good.mp4\n{nan}\n{src}/stereo48k.mkv\n{nan},0.0,0.4\n")
  out = str(tmp_path / "out")
  # Through the CLI: before, the NaN reached schema.serialize outside the per-clip try and the run exited 2.
  r = subprocess.run([sys.executable, "-m", "data_pipeline.ingest", "--input", str(csv_path), "--output", out,
                      "--workers", "1", "--quiet"], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  m = json.load(open(os.path.join(out, "manifest.json")))
  assert [(s["path"], s["reason"]) for s in m["skipped"]] == [(nan, "non_finite")]
  assert "NaN or Inf" in m["skipped"][0]["detail"] and "0.500 s" in m["skipped"][0]["detail"]
  # The same file's span before the NaN is a good clip; the good videos are intact.
  clips = list(schema.read_clips(schema.list_shards(out, "train")))
  assert [os.path.basename(c.video_id) for c in clips] == ["good.mp4", "stereo48k.mkv", "nan.mkv"]
  assert all(np.isfinite(c.audio).all() for c in clips) and len(clips[2].audio) == 6400
  one = ingest.convert_video(f"{src}/good.mp4", None, None, [], ingest.Options(), video_id=f"{src}/good.mp4")
  np.testing.assert_array_equal(clips[0].audio, one.audio)
  assert clips[0].frames == one.frames


def test_a_crash_with_one_worker_and_one_input_left_skips_only_that_input(video_dir, tmp_path):
  src, _ = video_dir
  csv_path = tmp_path / "list.csv"
  csv_path.write_text(f"{src}/stereo48k.mkv\n{src}/good.mp4\n{src}/audio8k.avi\n")
  m = ingest.ingest(str(csv_path), str(tmp_path / "a"), workers=1, progress=False, convert=convert_or_die)
  assert [(os.path.basename(s["path"]), s["reason"]) for s in m["skipped"]] == [("good.mp4", "crash")]
  assert "exit code 11" in m["skipped"][0]["detail"]
  assert m["clips"] == 2
  # The one input left (a resume of a single missing input) also runs in a worker: the parent survives.
  csv_path.write_text(f"{src}/good.mp4\n")
  m = ingest.ingest(str(csv_path), str(tmp_path / "b"), workers=1, progress=False, convert=convert_or_die)
  assert m["skipped_by_reason"] == {"crash": 1} and m["clips"] == 0


def convert_or_hang(job, options):
  """A convert function whose decoder never returns on one input."""
  if os.path.basename(job.path) == "good.mp4":
    time.sleep(3600)
  return ingest.convert_job(job, options)


def test_a_hanging_decoder_is_killed_and_skipped_as_timeout(video_dir, tmp_path):
  src, _ = video_dir
  csv_path = tmp_path / "list.csv"
  csv_path.write_text(f"{src}/good.mp4\n{src}/stereo48k.mkv\n{src}/audio8k.avi\n{src}/vfr.mov\n")
  t = time.monotonic()
  m = ingest.ingest(str(csv_path), str(tmp_path / "out"), workers=2, progress=False, timeout_s=2.0,
                    convert=convert_or_hang)
  assert time.monotonic() - t < 30
  assert [(os.path.basename(s["path"]), s["reason"]) for s in m["skipped"]] == [("good.mp4", "timeout")]
  assert "2 s time limit" in m["skipped"][0]["detail"]
  clips = list(schema.read_clips(schema.list_shards(str(tmp_path / "out"), "train")))
  assert [os.path.basename(c.video_id) for c in clips] == ["stereo48k.mkv", "audio8k.avi", "vfr.mov"]
  with pytest.raises(ValueError, match="timeout_s"):
    ingest.ingest(str(csv_path), str(tmp_path / "o2"), timeout_s=0, progress=False)


def test_a_timestamp_gap_is_capped_at_the_clips_true_span(video_dir, tmp_path):
  """A frame 10^8 s after the others: before, every 0.1 s of the gap repeated the previous frame (10^9
  JPEG references, hours of one worker); now frames stop at the audio's end, the clip is the 1 s overlap."""
  src, _ = video_dir
  gap = make_video(str(tmp_path / "gap.mkv"), gap_s=1e8)
  csv_path = tmp_path / "list.csv"
  csv_path.write_text(f"{gap}\n{src}/good.mp4\n")
  t = time.monotonic()
  m = ingest.ingest(str(csv_path), str(tmp_path / "out"), workers=1, progress=False, timeout_s=60)
  assert time.monotonic() - t < 30
  assert m["skipped"] == [] and m["clips"] == 2
  clip, good = schema.read_clips(schema.list_shards(str(tmp_path / "out"), "train"))
  assert abs(clip.duration_s - 1.0) < 0.1 and len(clip.frames) == int(np.ceil(clip.duration_s * 10 - 1e-6))
  assert len(clip.audio) == round(clip.duration_s * 16000)
  assert all(decode(f).mean() < 128 for f in clip.frames)  # The white frame after the gap is not in it.
  assert os.path.basename(good.video_id) == "good.mp4" and abs(good.duration_s - 1.0) < 0.1


def test_long_video_is_cut_into_aligned_clips(flash_click_video, tmp_path):
  """4 s cut at 1.5 s: three records of one source whose frames and samples are the whole clip's, in order,
  each starting at its own start time (so each keeps the alignment contract)."""
  whole = ingest.convert_video(flash_click_video, None, None, [], ingest.Options())
  pieces = ingest.split_clip(whole, 1.5)
  assert [(c.start_us, c.end_us) for c in pieces] == [
      (whole.start_us, whole.start_us + 1_500_000), (whole.start_us + 1_500_000, whole.start_us + 3_000_000),
      (whole.start_us + 3_000_000, whole.end_us)]
  assert sum(len(c.frames) for c in pieces) == len(whole.frames)
  assert b"".join(f for c in pieces for f in c.frames) == b"".join(whole.frames)
  np.testing.assert_array_equal(np.concatenate([c.audio for c in pieces]), whole.audio)
  for c in pieces:
    assert len(c.frames) == int(np.ceil(c.duration_s * 10 - 1e-6)) and len(c.audio) == round(c.duration_s * 16000)
  # Cuts fall on frame instants: at 3 fps a 1.5 s limit gives 4-frame (1.333 s) clips.
  assert [c.duration_s for c in ingest.split_clip(ingest.convert_video(
      flash_click_video, None, None, [], ingest.Options(fps=3)), 1.5)][:2] == [1.333333, 1.333334]
  # Through the CLI, the default limit of 10 s: a 12 s video is two records.
  (tmp_path / "in").mkdir()
  long = make_video(str(tmp_path / "in" / "long.mp4"), seconds=12.0, fps=10)
  out = str(tmp_path / "out")
  r = subprocess.run([sys.executable, "-m", "data_pipeline.ingest", "--input", str(tmp_path / "in"), "--output", out,
                      "--workers", "1", "--quiet"], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 0, r.stderr
  m = json.load(open(os.path.join(out, "manifest.json")))
  assert m["inputs"] == 1 and m["clips"] == 2 and m["options"]["max_clip_seconds"] == 10.0
  clips = list(schema.read_clips(schema.list_shards(out, "train")))
  assert [c.video_id for c in clips] == [os.path.basename(long)] * 2
  assert [(c.start_us, c.end_us) for c in clips] == [(0, 10_000_000), (10_000_000, 12_000_000)]
  assert [len(c.frames) for c in clips] == [100, 20] and [len(c.audio) for c in clips] == [160000, 32000]


def test_oversize_record_is_skipped(video_dir, monkeypatch):
  src, _ = video_dir
  job = ingest.Job(path=os.path.join(src, "good.mp4"), video_id="good.mp4")
  assert "records" in ingest.convert_job(job, ingest.Options())
  monkeypatch.setattr(ingest, "MAX_RECORD_BYTES", 10_000)  # In process: convert_job is what workers run.
  r = ingest.convert_job(job, ingest.Options())
  assert r["skip"]["reason"] == "oversize" and "--max-clip-seconds" in r["skip"]["detail"]


def test_span_past_a_truncated_end_and_past_a_short_file(video_dir, tmp_path):
  src, _ = video_dir
  csv_path = tmp_path / "list.csv"
  csv_path.write_text(
      f"{src}/truncated.mkv,1.0,2.5\n"  # Declared 3 s, decodes to about 1.5 s: the span is cut by damage.
      f"{src}/truncated.mkv,0.2,0.8\n"  # Inside the part that decodes: a good clip.
      f"{src}/good.mp4,0.5,3.0\n"  # The file (1 s, intact) is shorter than the span: cut at its end, counted.
      f"{src}/good.mp4,nan,0.5\n"
      f"{src}/good.mp4,0.0,inf\n")
  out = str(tmp_path / "out")
  m = ingest.ingest(str(csv_path), out, workers=1, progress=False)
  assert [(os.path.basename(s["path"]), s["reason"]) for s in m["skipped"]] == [
      ("truncated.mkv", "truncated"), ("good.mp4", "bad_range"), ("good.mp4", "bad_range")]
  assert "span ends at 2.50 s" in m["skipped"][0]["detail"]
  assert "start time nan is not a finite" in m["skipped"][1]["detail"]
  assert "end time inf is not a finite" in m["skipped"][2]["detail"]
  assert m["cut_short_count"] == 1 and m["cut_short"][0]["path"].endswith("good.mp4")
  assert "span ends at 3.00 s" in m["cut_short"][0]["detail"]
  part, short = schema.read_clips(schema.list_shards(out, "train"))
  assert (part.start_us, part.end_us) == (200_000, 800_000) and len(part.frames) == 6
  assert short.start_us == 500_000 and abs(short.end_us - 1_000_000) < 50_000


def test_split_with_a_path_is_refused_up_front(video_dir, tmp_path):
  src, _ = video_dir
  out = tmp_path / "out"
  for split in ("../x", "a/b", "..", "", ".hidden", "a\\b"):
    with pytest.raises(ingest.IngestError, match="not a plain name"):
      ingest.ingest(src, str(out), split=split, progress=False)
  assert not os.listdir(tmp_path)  # Refused before anything is written.
  r = subprocess.run([sys.executable, "-m", "data_pipeline.ingest", "--input", src, "--output", str(out),
                      "--split", "../x", "--quiet"], cwd=ROOT, capture_output=True, text=True)
  assert r.returncode == 2 and "--split '../x' is not a plain name" in r.stderr
  assert not os.listdir(tmp_path)


def test_files_are_fsynced_before_rename(video_dir, tmp_path, monkeypatch):
  src, _ = video_dir
  synced, order = [], []
  real_fsync, real_replace = os.fsync, os.replace
  monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real_fsync(fd))
  monkeypatch.setattr(os, "replace", lambda a, b: order.append((a, b, list(synced))) or real_replace(a, b))
  csv_path = tmp_path / "list.csv"
  csv_path.write_text(f"{src}/good.mp4\n")
  ingest.ingest(str(csv_path), str(tmp_path / "out"), workers=1, progress=False)
  renamed = {os.path.basename(b) for _, b, _ in order}
  assert {"manifest.json", "labels.csv", "plan.json", "train-00000.json", "train-00000-of-00001.tfrecord"} <= renamed
  for tmp, final, synced_before in order:
    assert tmp in synced_before, f"{final} renamed before its data was fsynced"
  assert str(tmp_path / "out") in synced  # And the folder, so the renames themselves are on disk.


def test_large_results_wait_on_disk_and_give_the_same_shards(video_dir, tmp_path, monkeypatch):
  src, _ = video_dir
  csv_path = tmp_path / "list.csv"
  csv_path.write_text(f"{src}/good.mp4\n{src}/no_audio.mp4\n{src}/stereo48k.mkv\n")
  ingest.ingest(str(csv_path), str(tmp_path / "memory"), workers=1, progress=False)
  monkeypatch.setattr(ingest, "SPOOL_BYTES", 0)  # The parent spools: every result goes to disk.
  ingest.ingest(str(csv_path), str(tmp_path / "spooled"), workers=1, progress=False)
  shards = [schema.list_shards(str(tmp_path / d), "train") for d in ("memory", "spooled")]
  assert [open(p, "rb").read() for p in shards[0]] == [open(p, "rb").read() for p in shards[1]]
  assert sum(schema.count_records(p) for p in shards[1]) == 2
  assert os.listdir(tmp_path / "spooled" / ".ingest" / "spool") == []  # Removed once in their shard.


def worker_that_cannot_start(conn):
  """Stands in for ingest._worker_main in a broken environment (say data_pipeline fails to import)."""
  os._exit(3)


def test_workers_that_cannot_start_are_an_error_not_a_skip_per_input(video_dir, tmp_path, monkeypatch):
  src, _ = video_dir
  monkeypatch.setattr(ingest, "_worker_main", worker_that_cannot_start)  # Pickled by name to the worker.
  with pytest.raises(ingest.IngestError, match=r"did not start \(exit code 3"):
    ingest.ingest(src, str(tmp_path / "out"), workers=2, progress=False)
  assert not os.path.exists(tmp_path / "out" / "manifest.json")


def test_a_convert_that_workers_cannot_import_is_an_error(video_dir, tmp_path):
  import types
  src, _ = video_dir
  module = types.ModuleType("made_up_module")  # Picklable by name here, importable nowhere else.
  exec("def convert(job, options):\n  return None", module.__dict__)
  module.convert.__module__ = "made_up_module"
  sys.modules["made_up_module"] = module
  try:
    with pytest.raises(ingest.IngestError, match="could not read its task: ModuleNotFoundError"):
      ingest.ingest(src, str(tmp_path / "out"), workers=1, progress=False, convert=module.convert)
  finally:
    del sys.modules["made_up_module"]
