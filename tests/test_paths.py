"""data_pipeline.paths: the one remote-path test, and file access through tf.io.gfile for URLs.

No real GCS bucket is reachable from the test machines: TensorFlow's in-memory file system (ram://) stands
in for gs://, through the same tf.io.gfile calls.
"""
import json

import numpy as np
import pytest

from avcl import checkpoints
from avcl.evaluate import report
from data_pipeline import paths, schema, tf_cpu

tf = tf_cpu.import_tf()


@pytest.mark.parametrize("path,remote", [
    ("gs://bucket/run", True), ("s3://b/x", True), ("ram://x", True), ("hdfs+x://h/p", True),
    ("/tmp/run", False), ("workdirs/default", False), ("C:\\runs\\a", False), ("runs/a://b", False),
    ("", False)])
def test_is_remote(path, remote):
  assert paths.is_remote(path) is remote


def test_join_and_absolute(tmp_path, monkeypatch):
  assert paths.join("gs://b/run/", "eval", "results.json") == "gs://b/run/eval/results.json"
  assert paths.join("a", "b") == "a/b"
  monkeypatch.chdir(tmp_path)
  assert paths.absolute("x") == str(tmp_path / "x")
  assert paths.absolute("gs://b/x") == "gs://b/x"


@pytest.mark.parametrize("root", ["ram://avcl-test-paths", "LOCAL"])
def test_read_write_local_and_url(root, tmp_path):
  root = str(tmp_path) if root == "LOCAL" else root
  d = paths.join(root, "a", "b")
  paths.makedirs(d)
  assert paths.isdir(d)
  f = paths.join(d, "x.txt")
  assert not paths.exists(f)
  paths.write_text(f, "héllo")
  assert paths.exists(f) and paths.read_text(f) == "héllo"
  paths.write_bytes(f, b"\x00\x01")  # Overwrites.
  assert paths.read_bytes(f) == b"\x00\x01"
  assert tf.io.gfile.listdir(d) == ["x.txt"]  # No temporary left behind.


def test_eval_results_and_run_config_on_a_url():
  """The evaluation writes results.{json,md,png} and reads config.json through the same layer as gs://."""
  workdir = "ram://avcl-test-eval-run"
  paths.makedirs(workdir)
  paths.write_text(paths.join(workdir, "config.json"),
                   json.dumps({"seed": 7, "audio": {"sample_rate": 8000}, "model": {"video": {"blocks": [1, 2]}}}))
  assert checkpoints.load_config(workdir).audio.sample_rate == 8000
  assert checkpoints.load_config(workdir).model.video.blocks == (1, 2)  # JSON lists back to tuples.
  with pytest.raises(FileNotFoundError, match="not an avcl training workdir"):
    checkpoints.load_config("ram://avcl-test-nothing-here")
  results = {"checkpoint_step": 3, "tasks": {"keyword": {"metric": "accuracy", "n_train": 4, "n_test": 2,
                                                          "scores": {"pretrained": 0.5, "logmel": 0.25}}}}
  out = report.write(results, paths.join(workdir, "eval"), details={"x": 1})
  assert json.loads(paths.read_text(out["json"])) == results
  assert "keyword" in paths.read_text(out["md"])
  assert paths.read_bytes(out["png"])[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.loads(paths.read_text(out["details"])) == {"x": 1}


def test_embedded_task_and_shards_from_a_url(tmp_path):
  """A data root given as a URL: an evaluation task's task.json and shards are read through tf.io.gfile."""
  from avcl.evaluate import tasks  # pylint: disable=g-import-not-at-top
  from tests.test_eval_runner import make_world  # pylint: disable=g-import-not-at-top
  local = str(tmp_path / "world")
  make_world(local, {"train": 4, "validation": 2, "test": 3})
  url = "ram://avcl-test-world"
  for f in paths.walk_files(local):
    rel = f[len(local) + 1:]
    paths.makedirs(paths.join(url, *rel.split("/")[:-1]))
    paths.write_bytes(paths.join(url, rel), paths.read_bytes(f))
  assert schema.list_shards(paths.join(url, "tasks", "keyword"), "test")[0].startswith(url + "/tasks/keyword/")
  a = tasks.get_task("keyword", sample_rate=16000, embedded_root=url)
  b = tasks.get_task("keyword", sample_rate=16000, embedded_root=local)
  got, want = list(a.read("test")), list(b.read("test"))
  assert len(got) == len(want) == 3
  for x, y in zip(got, want):
    assert x.key == y.key and x.labels == y.labels
    np.testing.assert_array_equal(x.audio, y.audio)
  with pytest.raises(tasks.DatasetNotFoundError, match=r"tasks there: \['keyword', 'sound_events'\]"):
    tasks.embedded_task(url, "speaker", sample_rate=16000)
