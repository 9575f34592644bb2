"""data_pipeline.paths: the one remote-path test, and file access through tf.io.gfile for URLs.

No real GCS bucket is reachable from the test machines: TensorFlow's in-memory file system (ram://) stands
in for gs://, through the same tf.io.gfile calls.
"""
import json

import pytest

from avcl.evaluate import report, runner
from data_pipeline import paths, schema

tf = schema.import_tf()


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
  paths.write_text(paths.join(workdir, "config.json"), json.dumps({"seed": 7, "audio": {"sample_rate": 8000}}))
  assert runner.load_run_config(workdir).audio.sample_rate == 8000
  with pytest.raises(FileNotFoundError, match="not an avcl training workdir"):
    runner.load_run_config("ram://avcl-test-nothing-here")
  results = {"checkpoint_step": 3, "tasks": {"keyword": {"metric": "accuracy", "n_train": 4, "n_test": 2,
                                                          "scores": {"pretrained": 0.5, "logmel": 0.25}}}}
  out = report.write(results, paths.join(workdir, "eval"), details={"x": 1})
  assert json.loads(paths.read_text(out["json"])) == results
  assert "keyword" in paths.read_text(out["md"])
  assert paths.read_bytes(out["png"])[:8] == b"\x89PNG\r\n\x1a\n"
  assert json.loads(paths.read_text(out["details"])) == {"x": 1}
