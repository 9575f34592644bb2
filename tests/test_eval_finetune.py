"""avcl.evaluate.finetune: the whole encoder trains on a task and beats chance; the original is untouched."""
import numpy as np
import pytest
from flax import nnx

from avcl import models
from avcl.evaluate import finetune, tasks
from tests.test_eval_runner import make_world, tiny_config


@pytest.mark.slow
def test_finetune_learns_tones_and_leaves_model_untouched(tmp_path):
  make_world(str(tmp_path / "world"), {"train": 32, "validation": 12, "test": 20})
  c = tiny_config(tmp_path / "world")
  model = models.build_model(c.model, c.audio, rngs=nnx.Rngs(0))
  before = nnx.to_pure_dict(nnx.state(model))
  task = tasks.get_task("keyword", sample_rate=16000, embedded_root=c.data.root)
  r = finetune.finetune_task(model, c, task, steps=120, learning_rate=1e-2, eval_every=30, progress=False)
  assert r.metric == "accuracy" and (r.n_train, r.n_val, r.n_test) == (32, 12, 20)
  assert r.score >= 0.6, r  # Chance is 0.25.
  assert r.hparams["steps"] in (30, 60, 90, 120)
  after = nnx.to_pure_dict(nnx.state(model))
  for a, b in zip(jax_leaves(before), jax_leaves(after)):
    np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]
