"""avcl.export: the SavedModel (and the TFLite window models) loaded in a fresh process where avcl, JAX and
Flax cannot be imported, compared with the JAX encoder; avcl.hear and avcl.embed load the export too."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from avcl import checkpoints, embed, export, hear
from data_pipeline import paths
from tests.encoder_fixtures import tiny_workdir  # noqa: F401  (a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = os.path.join(REPO, "tests", "blocked_imports.py")
# Measured (2026-12-02, this tiny model, batches of 1-4 sounds of 0.05-4.4 s): the export's scene and
# timestamp embeddings differ from the JAX encoder's by at most 3.1e-7 and 2.7e-7 of the largest embedding
# value, TFLite's window features by 3.3e-7 (float32 rounding in another order). Stated tolerance: 1e-5 of the
# largest value, plus rtol 1e-5.
TOL = 1e-5

LOADER = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    model_dir, inputs, output = sys.argv[1:4]
    m = tf.saved_model.load(model_dir)
    out = {k: getattr(m, k).numpy() for k in ("sample_rate", "embedding_size", "window_seconds", "hop_seconds",
                                              "timestamp_window_seconds", "timestamp_hop_seconds",
                                              "checkpoint_step")}
    x = np.load(inputs)
    for name in x.files:
      if name.startswith("audio"):
        audio = tf.constant(x[name])
        out["scene_" + name] = m.scene_embeddings(audio).numpy()
        emb, ts = m.timestamp_embeddings(audio)
        out["ts_" + name], out["ms_" + name] = emb.numpy(), ts.numpy()
        out["sig_scene_" + name] = m.signatures["scene_embeddings"](audio=audio)["embedding"].numpy()
        sig = m.signatures["timestamp_embeddings"](audio=audio)
        out["sig_ts_" + name], out["sig_ms_" + name] = sig["embedding"].numpy(), sig["timestamps_ms"].numpy()
    for name in ("scene_window", "timestamp_window"):
      interp = tf.lite.Interpreter(model_path=f"{model_dir}/tflite/{name}.tflite")
      interp.allocate_tensors()
      inp, res = interp.get_input_details()[0], interp.get_output_details()[0]
      rows = []
      for w in x[name + "s"]:
        interp.set_tensor(inp["index"], w[None])
        interp.invoke()
        rows.append(interp.get_tensor(res["index"])[0])
      out["tflite_" + name] = np.stack(rows)
    out["imported"] = np.array(sorted({k.split(".")[0] for k in sys.modules}))
    np.savez(output, **out)
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_workdir):  # pylint: disable=redefined-outer-name
  root = tmp_path_factory.mktemp("export")
  workdir = tiny_workdir
  out = str(root / "saved")
  assert export.main(["--workdir", workdir, "--output", out]) == 0
  return workdir, out, root


def test_savedmodel_without_avcl_or_jax_matches_the_jax_encoder(exported):
  workdir, out, root = exported
  model, config, step = checkpoints.restore_model(workdir)
  ref = hear.numpy_reference(model, config)  # avcl.evaluate.embed: the JAX encoder, jitted, no jax2tf.
  rng = np.random.default_rng(0)
  # Variable batch and length: shorter than a window, several windows, and batch sizes 1, 3, 2.
  audio = {"audio0": rng.uniform(-0.5, 0.5, (1, 800)), "audio1": rng.uniform(-0.5, 0.5, (3, 27000)),
           "audio2": 0.3 * np.sin(np.arange(40000) / 7.0)[None].repeat(2, 0) * np.array([[1.0], [0.5]])}
  audio = {k: v.astype(np.float32) for k, v in audio.items()}
  windows = {"scene_windows": rng.uniform(-0.5, 0.5, (3, ref.window)).astype(np.float32),
             "timestamp_windows": rng.uniform(-0.5, 0.5, (2, ref.timestamp_window)).astype(np.float32)}
  np.savez(root / "inputs.npz", **audio, **windows)
  script = root / "load_exported.py"
  script.write_text(LOADER)
  env = dict(os.environ, PYTHONPATH=str(root))  # Not the repository: and the blocker refuses avcl anyway.
  proc = subprocess.run([sys.executable, BLOCK, "avcl,jax,jaxlib,flax,data_pipeline", "load_exported", out,
                         str(root / "inputs.npz"), str(root / "outputs.npz")], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = np.load(root / "outputs.npz")
  assert not {"avcl", "jax", "jaxlib", "flax", "data_pipeline"} & set(got["imported"])
  assert (got["sample_rate"], got["embedding_size"], got["checkpoint_step"]) == (16000, 512, 7)
  assert (got["window_seconds"], got["hop_seconds"]) == (1.0, 0.5)
  assert (got["timestamp_window_seconds"], got["timestamp_hop_seconds"]) == (0.25, 0.05)
  for k, x in audio.items():
    scene = ref.embed_clips(list(x))
    scale = np.abs(scene).max()
    for name in ("scene_", "sig_scene_"):
      np.testing.assert_allclose(got[name + k], scene, rtol=TOL, atol=TOL * scale)
    emb, ms = ref.timestamp_embeddings(x)
    assert got["ts_" + k].shape == emb.shape == (x.shape[0], x.shape[1] // 800 + 1, 512)
    for name in ("ts_", "sig_ts_"):
      np.testing.assert_allclose(got[name + k], emb, rtol=TOL, atol=TOL * np.abs(emb).max())
    for name in ("ms_", "sig_ms_"):
      np.testing.assert_allclose(got[name + k], ms, atol=1e-3)
  # The two rows of audio2 are one sound at two gains: different embeddings (the input is used).
  assert np.abs(got["scene_audio2"][0] - got["scene_audio2"][1]).max() > 1e-3 * np.abs(got["scene_audio2"]).max()
  np.testing.assert_allclose(got["tflite_scene_window"], ref.window_features(windows["scene_windows"]),
                             rtol=TOL, atol=TOL * np.abs(got["tflite_scene_window"]).max())
  ts_ref = hear.numpy_reference(model, config)
  ts_ref.window = ref.timestamp_window  # The same encoder, on timestamp-length windows.
  np.testing.assert_allclose(got["tflite_timestamp_window"], ts_ref.window_features(windows["timestamp_windows"]),
                             rtol=TOL, atol=TOL * np.abs(got["tflite_timestamp_window"]).max())
  meta = json.loads(open(os.path.join(out, "tflite", "windows.json")).read())
  assert (meta["scene_window_samples"], meta["timestamp_window_samples"], meta["batch"]) == (16000, 4000, 1)


def test_hear_and_embed_load_the_export(exported, tmp_path):
  workdir, out, _ = exported
  loaded, live = hear.load_model(out), hear.load_model(workdir)
  assert (loaded.sample_rate, loaded.scene_embedding_size, loaded.checkpoint_step) == (16000, 512, 7)
  x = np.random.default_rng(1).uniform(-0.5, 0.5, (2, 20000)).astype(np.float32)
  np.testing.assert_allclose(hear.get_scene_embeddings(x, loaded).numpy(),
                             hear.get_scene_embeddings(x, live).numpy(), rtol=1e-6, atol=1e-6)
  sf.write(str(tmp_path / "a.wav"), x[0], 16000)
  for module, name in ((loaded, "s"), (live, "w")):  # What `avcl.embed --saved-model` / `--workdir` load.
    embed.embed_files(module, [str(tmp_path / "a.wav")], str(tmp_path / name), timestamps=True, progress=False,
                      index_format="csv")
  for f in ("scene.npy", "timestamps.npy"):
    np.testing.assert_allclose(np.load(tmp_path / "s" / f), np.load(tmp_path / "w" / f), rtol=1e-6, atol=1e-6)
  assert export.main(["--workdir", workdir, "--output", out]) == 1  # Never over an existing SavedModel.


def test_export_to_a_url(exported):
  """A SavedModel written to and loaded from a URL (ram:// standing in for gs://)."""
  url = "ram://avcl-export-test/saved"
  workdir, local, _ = exported
  info = export.export(workdir, url, tflite=False)
  assert paths.exists(paths.join(url, "saved_model.pb")) and info["tflite"] == {}
  loaded = hear.load_model(url)
  x = np.random.default_rng(2).uniform(-0.5, 0.5, (1, 9000)).astype(np.float32)
  np.testing.assert_allclose(hear.get_scene_embeddings(x, loaded).numpy(),
                             hear.get_scene_embeddings(x, hear.load_model(local)).numpy(), rtol=1e-6, atol=1e-6)
