"""The Beam ingest (DirectRunner) writes what the local ingest writes: same shards, records and skips."""
import json
import os

import pytest

beam = pytest.importorskip("apache_beam")  # Optional extra: pip install -e '.[beam]'.

from data_pipeline import beam_ingest, ingest, schema  # noqa: E402
from tests.video_fixtures import video_dir  # noqa: E402,F401  (fixture)


def _shards(out):
  return [os.path.basename(p) for p in schema.list_shards(out, "train")]


def _without_timing(manifest):
  return {k: v for k, v in manifest.items() if k != "elapsed_s"}


def test_beam_matches_local_ingest(video_dir, tmp_path):
  src, expected = video_dir
  local_out, beam_out = str(tmp_path / "local"), str(tmp_path / "beam")
  local = ingest.ingest(src, local_out, workers=1, shard_clips=4, progress=False)
  m = beam_ingest.run(src, beam_out, shard_clips=4)

  assert m == json.load(open(os.path.join(beam_out, "manifest.json")))
  # Same skipped inputs with the same reasons (corrupt, truncated, no audio/video, unsupported codec).
  bad = {os.path.relpath(s["path"], src): s["reason"] for s in m["skipped"]}
  assert bad == {n: r for n, r in expected.items() if r is not None}
  assert m["skipped"] == local["skipped"]
  assert _without_timing(m) == _without_timing(local)

  assert _shards(beam_out) == _shards(local_out) and len(_shards(local_out)) > 1
  n = 0
  for name in _shards(local_out):
    a = list(schema.iter_records(os.path.join(local_out, name)))
    b = list(schema.iter_records(os.path.join(beam_out, name)))
    assert b == a  # Identical records, in the same order.
    for ra, rb in zip(a, b):  # And identical content once parsed (audio samples, JPEG frames, labels).
      ca, cb = schema.parse(ra), schema.parse(rb)
      assert ca.video_id == cb.video_id and ca.frames == cb.frames
      assert (ca.audio == cb.audio).all() and ca.start_us == cb.start_us and ca.end_us == cb.end_us
    n += len(a)
    # Beam's TFRecord framing (with its masked CRC32C) is byte for byte TensorFlow's.
    with open(os.path.join(local_out, name), "rb") as fa, open(os.path.join(beam_out, name), "rb") as fb:
      assert fa.read() == fb.read()
  assert n == m["clips"] == sum(r is None for r in expected.values())
  with open(os.path.join(local_out, "labels.csv"), "rb") as fa, open(os.path.join(beam_out, "labels.csv"), "rb") as fb:
    assert fa.read() == fb.read()


def test_beam_resumes_local_output_and_refuses_other_options(video_dir, tmp_path):
  src, _ = video_dir
  out = str(tmp_path / "out")
  local = ingest.ingest(src, out, workers=1, shard_clips=8, progress=False)
  first = os.path.join(out, _shards(out)[0])
  mtime = os.stat(first).st_mtime_ns
  plan = beam_ingest.make_plan(src, out, labels_csv=None, options=ingest.Options(), shard_clips=8, split="train")
  assert plan.pending == []  # Every shard the local path wrote counts as done.
  m = beam_ingest.run(src, out, shard_clips=8)
  assert _without_timing(m) == _without_timing(local) and os.stat(first).st_mtime_ns == mtime
  with pytest.raises(ingest.IngestError, match="other inputs or options"):
    beam_ingest.run(src, out, shard_clips=8, options=ingest.Options(size=32))


def test_beam_multi_process_runner_pickles_the_pipeline(video_dir, tmp_path):
  """Workers in other processes (as on Dataflow) get the pipeline by pickling: it must survive that."""
  src, expected = video_dir
  out = str(tmp_path / "mp")
  m = beam_ingest.run(src, out, shard_clips=5, pipeline_args=["--direct_running_mode=multi_processing",
                                                              "--direct_num_workers=2"])
  assert m["clips"] == sum(r is None for r in expected.values())
  assert sum(schema.count_records(p) for p in schema.list_shards(out, "train")) == m["clips"]
  assert {os.path.relpath(s["path"], src): s["reason"] for s in m["skipped"]} == {
      n: r for n, r in expected.items() if r is not None}


def test_beam_skips_a_bad_input_instead_of_failing_the_job(video_dir, tmp_path):
  """Non-finite audio (which used to raise in the Beam worker and fail the job after its retries) and a long
  video: the job succeeds, the bad input is a skip in manifest.json, the long video is cut into clips."""
  from tests.video_files import make_video
  src, _ = video_dir
  nan = make_video(str(tmp_path / "nan.mkv"), audio_codec="pcm_f32le", nan_at=[0.5])
  long = make_video(str(tmp_path / "long.mp4"), seconds=2.5)
  csv_path = tmp_path / "list.csv"
  csv_path.write_text(f"{src}/good.mp4\n{nan}\n{long}\n")
  out = str(tmp_path / "out")
  assert beam_ingest.main(["--input", str(csv_path), "--output", out, "--max-clip-seconds", "1",
                           "--timeout-s", "60"]) == 0
  m = json.load(open(os.path.join(out, "manifest.json")))
  assert [(s["path"], s["reason"]) for s in m["skipped"]] == [(nan, "non_finite")]
  clips = list(schema.read_clips(schema.list_shards(out, "train")))
  assert [(os.path.basename(c.video_id), c.start_us) for c in clips] == [
      ("good.mp4", 0), ("long.mp4", 0), ("long.mp4", 1_000_000), ("long.mp4", 2_000_000)]
  assert m["clips"] == 4


def test_beam_survives_a_crashing_and_a_hanging_decoder(video_dir, tmp_path):
  """Each element converts in a decoder process: one that dies is a `crash` skip, one that hangs is killed
  at the time limit (`timeout`); the other elements and the job carry on."""
  from tests.test_ingest import convert_or_die, convert_or_hang
  src, _ = video_dir
  csv_path = tmp_path / "list.csv"
  csv_path.write_text(f"{src}/good.mp4\n{src}/stereo48k.mkv\n")
  m = beam_ingest.run(str(csv_path), str(tmp_path / "crash"), convert=convert_or_die)
  assert [(os.path.basename(s["path"]), s["reason"]) for s in m["skipped"]] == [("good.mp4", "crash")]
  assert m["clips"] == 1
  m = beam_ingest.run(str(csv_path), str(tmp_path / "hang"), convert=convert_or_hang, timeout_s=2.0)
  assert [(os.path.basename(s["path"]), s["reason"]) for s in m["skipped"]] == [("good.mp4", "timeout")]
  clips = list(schema.read_clips(schema.list_shards(str(tmp_path / "hang"), "train")))
  assert [os.path.basename(c.video_id) for c in clips] == ["stereo48k.mkv"]
