"""avcl.evaluate.probes against scikit-learn's LogisticRegression on a fixed embedding set."""
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import linear_model

from avcl.evaluate import probes


def _embedding_set(seed=0, n=400, dim=24, classes=6, spread=1.2):
  """Gaussian class clusters: a fixed stand-in for frozen embeddings (overlapping, so not trivial)."""
  rng = np.random.default_rng(seed)
  means = rng.normal(size=(classes, dim)) * spread
  scale = rng.uniform(0.5, 3.0, size=dim)  # Unequal feature scales: standardisation matters.
  def draw(m):
    y = rng.integers(0, classes, size=m)
    return probes.Split(((means[y] + rng.normal(size=(m, dim))) * scale + 5.0).astype(np.float32), y)
  return draw(n), draw(n // 2), draw(n)


def test_standardize_uses_train_statistics():
  rng = np.random.default_rng(0)
  a, b = rng.normal(3, 2, (500, 4)), rng.normal(0, 1, (50, 4))
  a[:, 2] = 7.0  # Constant feature: centred, not blown up.
  sa, sb = probes.standardize(a, b)
  np.testing.assert_allclose(sa.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(sa[:, [0, 1, 3]].std(0), 1, atol=1e-4)
  assert np.all(sa[:, 2] == 0)
  np.testing.assert_allclose(sb, ((b - a.mean(0)) / np.where(a.std(0) < 1e-8, 1, a.std(0))), rtol=1e-5,
                             atol=1e-5)


def test_lbfgs_solves_sklearn_objective():
  train, _, test = _embedding_set()
  xtr, xte = probes.standardize(train.x, test.x)
  c = 0.5
  ref = linear_model.LogisticRegression(C=c, max_iter=10_000, tol=1e-8).fit(xtr, train.y)
  params, losses = probes.fit_linear_lbfgs(jnp.asarray(xtr), jnp.asarray(train.y), 1 / (2 * c * train.n),
                                           num_classes=6, multi_label=False, iterations=200)
  assert np.all(np.isfinite(np.asarray(losses)))
  # Same convex objective: the same minimiser (up to a shift of all logits) and the same predictions.
  w = np.asarray(params["w"])
  np.testing.assert_allclose(w - w.mean(1, keepdims=True), ref.coef_.T - ref.coef_.T.mean(1, keepdims=True),
                             atol=2e-3)
  ours = (xte @ w + np.asarray(params["b"])).argmax(1)
  assert np.mean(ours == ref.predict(xte)) > 0.99


def test_linear_probe_within_one_point_of_sklearn():
  train, val, test = _embedding_set(seed=1, spread=0.45)
  result = probes.linear_probe(train, val, test, num_classes=6, multi_label=False, progress=False)
  # Reference: LogisticRegression with C picked on the same validation split over the same grid.
  xtr, xva, xte = probes.standardize(train.x, val.x, test.x)
  best = max((linear_model.LogisticRegression(C=1 / (2 * l2 * train.n), max_iter=10_000).fit(xtr, train.y)
              for l2 in probes.LINEAR_L2_GRID), key=lambda m: m.score(xva, val.y))
  ref = best.score(xte, test.y)
  default = linear_model.LogisticRegression(max_iter=10_000).fit(xtr, train.y).score(xte, test.y)
  assert 0.5 < ref < 0.98  # Neither trivial nor hopeless: the comparison means something.
  assert abs(result.score - ref) <= 0.01, (result, ref)
  assert result.score >= default - 0.01, (result, default)  # Tuning never costs more than a point.
  # With sklearn's default C = 1 fixed (l2 = 1 / (2 n)), the probe is sklearn's estimator.
  fixed = probes.linear_probe(train, val, test, num_classes=6, multi_label=False, progress=False,
                              l2_grid=(1 / (2 * train.n),))
  assert abs(fixed.score - default) <= 0.01, (fixed, default)
  assert (result.n_train, result.n_val, result.n_test) == (400, 200, 400)
  assert result.metric == "accuracy" and result.hparams["optimizer"] == "lbfgs"


def test_linear_probe_adam_close_to_lbfgs():
  train, val, test = _embedding_set(seed=2, spread=0.45)
  a = probes.linear_probe(train, val, test, num_classes=6, multi_label=False, progress=False)
  b = probes.linear_probe(train, val, test, num_classes=6, multi_label=False, optimizer="adam",
                          l2_grid=(1e-3, 1e-4), lr_grid=(1e-2, 3e-3), steps=600, progress=False)
  assert abs(a.score - b.score) <= 0.03
  assert b.hparams["learning_rate"] in (1e-2, 3e-3)


def test_multilabel_probe_beats_chance_and_reports_d_prime():
  rng = np.random.default_rng(3)
  dim, classes = 16, 5
  proj = rng.normal(size=(classes, dim))
  def draw(m):
    y = (rng.random((m, classes)) < 0.3).astype(np.float32)
    return probes.Split((y @ proj + rng.normal(size=(m, dim)) * 1.5).astype(np.float32), y)
  train, val, test = draw(300), draw(150), draw(300)
  lin = probes.linear_probe(train, val, test, num_classes=classes, multi_label=True, progress=False)
  mlp = probes.mlp_probe(train, val, test, num_classes=classes, multi_label=True, hidden=32,
                         l2_grid=(1e-3,), lr_grid=(3e-3,), steps=400, progress=False)
  for r in (lin, mlp):
    assert r.metric == "mAP"
    assert r.score > 0.6  # Chance mAP is the positive rate, ~0.3.
    assert r.extra["d_prime"] > 1.0


def test_mlp_probe_solves_xor_that_linear_cannot():
  rng = np.random.default_rng(4)
  def draw(m):
    x = rng.normal(size=(m, 2)).astype(np.float32)
    return probes.Split(x, (x[:, 0] * x[:, 1] > 0).astype(np.int32))
  train, val, test = draw(600), draw(200), draw(400)
  lin = probes.linear_probe(train, val, test, num_classes=2, multi_label=False, progress=False)
  mlp = probes.mlp_probe(train, val, test, num_classes=2, multi_label=False, hidden=32,
                         l2_grid=(1e-4,), lr_grid=(1e-2,), steps=600, progress=False)
  assert lin.score < 0.65 and mlp.score > 0.9


def test_probe_input_errors():
  train, val, test = _embedding_set(n=20)
  with pytest.raises(ValueError, match="outside"):
    probes.linear_probe(train, val, test, num_classes=3, multi_label=False, progress=False)
  with pytest.raises(ValueError, match="validation features have dim"):
    probes.linear_probe(train, probes.Split(val.x[:, :3], val.y), test, num_classes=6, multi_label=False)
  with pytest.raises(ValueError, match="probe must be one of"):
    probes.run_probe("svm", train, val, test, num_classes=6, multi_label=False)
