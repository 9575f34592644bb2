"""avcl.checkpoints: restore_model for evaluation and its errors."""
import jax
import numpy as np
import pytest
from flax import nnx

from avcl import checkpoints, train
from configs import test_tiny
from tests import test_train, tiny_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  config = test_tiny.get_config()  # 6 steps, checkpoints at 2, 4, 6.
  work = tmp_path_factory.mktemp("run")
  train.train(config, str(work), batches=(tiny_data.global_batch(s, config) for s in range(6)))
  return work, config


def test_restore_model_returns_the_trained_state(trained):
  work, config = trained
  model, restored_config, step = checkpoints.restore_model(str(work))
  assert step == 6
  assert restored_config.model.video.blocks == tuple(config.model.video.blocks)
  state = test_train._restore_all(str(work), 6, config)[0]  # pylint: disable=protected-access
  got = jax.device_get(nnx.to_pure_dict(nnx.state(model)))
  test_train._assert_trees_close(train.model_state(state), got, rtol=0, what="restore_model")  # pylint: disable=protected-access
  # The restored model runs: audio embeddings of the right size.
  batch = tiny_data.global_batch(0, config)
  from avcl import frontend  # pylint: disable=g-import-not-at-top
  logmel = frontend.from_config(config.audio)(batch["audio"][:4])
  emb = model({"logmel": logmel}, train=False)["logmel"]
  assert emb.shape == (4, config.model.embed_dim)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(emb), axis=-1), 1.0, rtol=1e-5)
  assert checkpoints.restore_model(str(work), step=2)[2] == 2  # An older one.


def _old_layout_copy(work, config, step, dest):
  """`dest`: WORKDIR `work`'s config.json and its checkpoint `step` rewritten as training wrote checkpoints
  before the train state was split: {"model": the whole nnx state as one pure dict, "opt_state", "step"}."""
  state = test_train._restore_all(str(work), step, config)[0]  # pylint: disable=protected-access
  model, _, _ = checkpoints.restore_model(str(work), step)
  old = {"model": nnx.to_pure_dict(nnx.state(model)), "opt_state": state["opt_state"], "step": state["step"]}
  checkpoints.write_config(dest, config)
  manager = checkpoints.make_manager(dest)
  checkpoints.save(manager, step, old)
  manager.wait_until_finished()
  manager.close()
  return state


def test_old_layout_checkpoint_restores_and_resumes_exactly(tmp_path, trained):
  """A run whose newest checkpoint has the older layout evaluates (restore_model) and resumes: the resumed
  run ends bit for bit where the uninterrupted run did, and writes the current layout from then on."""
  work, config = trained
  old = tmp_path / "old"
  _old_layout_copy(work, config, 4, old)
  manager = checkpoints.make_manager(old, read_only=True)
  assert checkpoints.is_old_layout(manager, 4)
  manager.close()
  model, _, step = checkpoints.restore_model(str(old))
  assert step == 4
  want = nnx.to_pure_dict(nnx.state(checkpoints.restore_model(str(work), 4)[0]))
  test_train._assert_trees_close(want, nnx.to_pure_dict(nnx.state(model)), rtol=0, what="old layout")  # pylint: disable=protected-access

  out = train.train(config, str(old), batches=(tiny_data.global_batch(s, config) for s in range(4, 6)))
  assert out["status"] == "done" and out["step"] == 6
  manager = checkpoints.make_manager(old, read_only=True)
  assert manager.all_steps() == [4, 6] and not checkpoints.is_old_layout(manager, 6)
  manager.close()
  resumed = test_train._restore_all(str(old), 6, config)[0]  # pylint: disable=protected-access
  reference = test_train._restore_all(str(work), 6, config)[0]  # pylint: disable=protected-access
  test_train._assert_trees_close(reference, resumed, rtol=0, what="resumed from the old layout")  # pylint: disable=protected-access


def test_restore_model_errors(tmp_path, trained):
  with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
    checkpoints.restore_model(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoints.CheckpointError, match="no config.json"):
    checkpoints.restore_model(str(tmp_path / "empty"))
  checkpoints.write_config(tmp_path / "empty", test_tiny.get_config())
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoints in"):
    checkpoints.restore_model(str(tmp_path / "empty"))
  work, _ = trained
  with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint step 7 not in .*available steps: \[2, 4, 6\]"):
    checkpoints.restore_model(str(work), step=7)


def test_restore_model_names_mismatched_parameter_shapes(tmp_path, trained):
  work, config = trained
  # A copy of the run whose config.json claims a wider embedding than the checkpoint was trained with.
  import shutil  # pylint: disable=g-import-not-at-top
  copy = tmp_path / "copy"
  shutil.copytree(work, copy)
  config = test_tiny.get_config()
  config.model.embed_dim = 12
  checkpoints.write_config(copy, config)
  with pytest.raises(checkpoints.CheckpointError) as e:
    checkpoints.restore_model(str(copy))
  message = str(e.value)
  assert "does not match the config's architecture" in message
  assert "model/heads/logmel/" in message and "(8,)" in message and "(12,)" in message, message


def test_relative_workdir_trains_and_restores(tmp_path, monkeypatch):
  """README's main command passes a relative workdir; orbax itself only takes absolute paths."""
  config = test_tiny.get_config()
  config.train.num_steps = 2
  config.train.checkpoint_every = 2
  monkeypatch.chdir(tmp_path)
  train.train(config, "workdirs/rel", batches=(tiny_data.global_batch(s, config) for s in range(2)))
  assert (tmp_path / "workdirs" / "rel" / "checkpoints" / "2").is_dir()
  assert checkpoints.restore_model("workdirs/rel")[2] == 2
  assert str(checkpoints.absolute("workdirs/rel")) == str(tmp_path / "workdirs" / "rel")
  assert str(checkpoints.absolute("gs://bucket/run")) == "gs://bucket/run"
