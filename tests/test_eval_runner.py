"""End-to-end evaluation on a tiny synthetic world with a random-init model: files, schema, baselines."""
import json
import os

import numpy as np
import pytest
from flax import nnx

from avcl import checkpoints, models
from avcl.evaluate import embed, report, runner
from configs import default
from data_pipeline import schema

SR = 16000
FREQS = (300.0, 700.0, 1500.0, 3100.0)


def _tone_clip(vid, labels, seconds, rng):
  t = np.arange(int(seconds * SR)) / SR
  audio = 0.02 * rng.normal(size=t.size)
  for l in labels:
    audio += 0.3 * np.sin(2 * np.pi * FREQS[l] * t + rng.uniform(0, 6.3))
  return schema.Clip(video_id=vid, audio=audio.astype(np.float32), sample_rate=SR, frames=[], fps=10.0,
                     start_us=0, end_us=int(seconds * 1e6), label_index=list(labels))


def make_world(root, counts=None):
  """tasks/keyword (one tone of 4) and tasks/sound_events (any subset of the 4 tones), 0.6-1.4 s clips."""
  counts = counts or {"train": 32, "validation": 12, "test": 20}
  rng = np.random.default_rng(0)
  for name, multi in (("keyword", False), ("sound_events", True)):
    d = os.path.join(root, "tasks", name)
    for split, n in counts.items():
      clips = []
      for i in range(n):
        labels = sorted(set(rng.choice(4, rng.integers(1, 3)).tolist())) if multi else [i % 4]
        clips.append(_tone_clip(f"{name}-{split}-{i}", labels, rng.uniform(0.6, 1.4), rng))
      schema.write_shards(clips, d, split, 1)
    with open(os.path.join(d, "task.json"), "w") as f:
      json.dump({"name": name, "metric": "mAP" if multi else "accuracy", "multi_label": multi,
                 "num_classes": 4, "class_names": [str(x) for x in FREQS], "counts": counts}, f)


def tiny_config(root):
  c = default.get_config()
  c.data.root = str(root)
  c.model.logmel.width = 4
  c.model.logmel.depth = 2
  c.model.video.name = ""
  c.model.embed_dim = 8
  c.model.head_hidden = 0
  c.loss.pairs.logmel_video = 0.0
  c.eval.tasks = ("keyword", "sound_events")
  c.eval.window_seconds = 0.5
  c.eval.hop_seconds = 0.25
  c.eval.batch_size = 16
  return c


def test_frame_windows_cover_clip():
  x = np.arange(1, 11, dtype=np.float32)
  w = embed.frame_windows(x, 4, 3)
  assert w.shape == (3, 4)  # Starts 0, 3, 6; the last runs to 9 (zero-padded).
  np.testing.assert_array_equal(w[-1], [7, 8, 9, 10])
  np.testing.assert_array_equal(embed.frame_windows(x[:2], 4, 3), [[1, 2, 0, 0]])
  with pytest.raises(ValueError, match="samples > 0"):
    embed.frame_windows(np.zeros(0, np.float32), 4, 3)


def test_centred_windows_timestamps():
  audio = np.arange(1, 11, dtype=np.float32)[None]
  w, centres = embed.centred_windows(audio, 4, 3)
  np.testing.assert_array_equal(centres, [0, 3, 6, 9])
  np.testing.assert_array_equal(w[0, 0], [0, 0, 1, 2])  # Centred on sample 0: half a window of zeros.
  np.testing.assert_array_equal(w[0, 3], [8, 9, 10, 0])


def test_clip_embedding_is_mean_of_window_features(tmp_path):
  c = tiny_config(tmp_path)
  model = models.build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  e = embed.Embedder(model, c.audio, window_seconds=0.5, hop_seconds=0.25, batch_size=4)
  clip = np.random.default_rng(0).normal(size=int(1.3 * SR)).astype(np.float32) * 0.1
  windows = embed.frame_windows(clip, e.window, e.hop)
  assert windows.shape[0] == 5  # 0.5 s windows every 0.25 s over 1.3 s.
  per_window = np.stack([e.window_features(w[None])[0] for w in windows])
  together = e.embed_clips([clip, clip[:100]])
  np.testing.assert_allclose(together[0], per_window.mean(0), rtol=1e-4, atol=1e-5)
  assert together.shape == (2, e.dim) and e.dim == model.audio_feature_dim


def test_logmel_stats_match_numpy(tmp_path):
  from avcl import frontend
  c = tiny_config(tmp_path)
  rng = np.random.default_rng(1)
  clips = [rng.normal(size=n).astype(np.float32) for n in (8000, 12345)]
  got = embed.LogmelStats(c.audio, batch_size=4).embed_clips(clips)
  for clip, g in zip(clips, got):
    x = np.asarray(frontend.from_config(c.audio)(clip[None]))[0]  # The clip alone, unpadded.
    ref = np.r_[x.mean(0), x.std(0)]
    # Frames near the clip's end see zero padding instead of reflection: a small difference only.
    np.testing.assert_allclose(g, ref, atol=0.05 * np.abs(ref).max())


def test_evaluate_model_writes_report(tmp_path, capsys):
  make_world(str(tmp_path / "world"))
  c = tiny_config(tmp_path / "world")
  model = models.build_model(c.model, c.audio, rngs=nnx.Rngs(1))
  out = tmp_path / "eval"
  results = runner.evaluate_model(model, c, step=7, out_dir=str(out), progress=False)
  for f in ("results.json", "results.md", "results.png", "details.json"):
    assert (out / f).stat().st_size > 0
  with open(out / "results.json") as f:
    on_disk = json.load(f)
  assert on_disk == results
  report.validate_results(on_disk)
  assert on_disk["checkpoint_step"] == 7
  kw, ev = on_disk["tasks"]["keyword"], on_disk["tasks"]["sound_events"]
  assert (kw["metric"], ev["metric"]) == ("accuracy", "mAP")
  assert (kw["n_train"], kw["n_test"]) == (32, 20)
  assert set(kw["scores"]) == {"pretrained", "random_init", "logmel"}
  # Pure tones: pooled log-mel separates them (chance: 25% accuracy, mAP ~0.4).
  assert kw["scores"]["logmel"] >= 0.9 and ev["scores"]["logmel"] >= 0.8
  details = json.load(open(out / "details.json"))
  assert details["tasks"]["keyword"]["n_val"] == 12
  assert "d_prime" in details["tasks"]["sound_events"]["probes"]["logmel"]["extra"]
  printed = capsys.readouterr().out
  assert "| keyword | accuracy | 32 | 20 |" in printed


def test_eval_config_errors_name_field(tmp_path):
  make_world(str(tmp_path / "world"), {"train": 4, "validation": 4, "test": 4})
  c = tiny_config(tmp_path / "world")
  model = models.build_model(c.model, c.audio, rngs=nnx.Rngs(1))
  c.eval.probe = "svm"
  with pytest.raises(ValueError, match="config.eval.probe"):
    runner.evaluate_model(model, c, step=0, out_dir=None)
  c.eval.probe = "linear"
  c.eval.features = "penultimate"
  with pytest.raises(ValueError, match="config.eval.features='penultimate' must be one of"):
    runner.evaluate_model(model, c, step=0, out_dir=None)
  c.eval.features = "pooled"
  c.eval.tasks = ("keyword", "speaker")
  with pytest.raises(FileNotFoundError, match="'speaker'"):
    runner.evaluate_model(model, c, step=0, out_dir=None)


def test_architecture_mismatch_names_field_and_parameter(tmp_path):
  a = tiny_config(tmp_path)
  b = tiny_config(tmp_path)
  b.model.logmel.width = 8
  with pytest.raises(ValueError, match=r"config\.model\.logmel\.width is 8 in the given config but 4"):
    runner.check_same_architecture(b, a)
  ma = models.build_model(a.model, a.audio, rngs=nnx.Rngs(0))
  mb = models.build_model(b.model, b.audio, rngs=nnx.Rngs(0))
  # The one shape check of a restore (checkpoints.shape_problems) names the parameter.
  problems = checkpoints.shape_problems(nnx.state(ma, nnx.Param), nnx.state(mb, nnx.Param))
  assert any(p.startswith("encoders/logmel/") and "checkpoint has shape" in p for p in problems), problems


def test_evaluate_model_on_tfds_task_with_mock_data(tmp_path):
  """A TFDS task through the whole pipeline (variable-length int16 audio, resampling, report)."""
  from avcl.evaluate import tasks
  tfds = tasks._tfds()
  c = tiny_config(tmp_path)
  c.eval.tfds_data_dir = str(tmp_path / "tfds")
  c.eval.baselines = ("logmel",)
  model = models.build_model(c.model, c.audio, rngs=nnx.Rngs(1))
  with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path / "tfds")):
    results = runner.evaluate_model(model, c, step=1, out_dir=str(tmp_path / "eval"), tasks=["crema_d"],
                                    progress=False, print_table=False)
  t = results["tasks"]["crema_d"]
  assert (t["metric"], t["n_train"], t["n_test"]) == ("accuracy", 6, 6)
  assert set(t["scores"]) == {"pretrained", "logmel"}
