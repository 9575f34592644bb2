"""avcl.evaluate.metrics against scikit-learn and scipy."""
import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from avcl.evaluate import metrics


def test_accuracy_matches_sklearn():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(200, 7))
  labels = rng.integers(0, 7, size=200)
  assert metrics.accuracy(logits, labels) == pytest.approx(
      skm.accuracy_score(labels, logits.argmax(-1)))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("quantise", [False, True])
def test_map_equals_sklearn_macro(seed, quantise):
  rng = np.random.default_rng(seed)
  targets = (rng.random((300, 12)) < rng.uniform(0.05, 0.5, size=12)).astype(np.float32)
  scores = rng.normal(size=(300, 12)) + 1.5 * targets
  if quantise:  # Many ties: scores on a coarse grid.
    scores = np.round(scores)
  assert targets.sum(0).min() > 0
  ours = metrics.mean_average_precision(scores, targets)
  ref = skm.average_precision_score(targets, scores, average="macro")
  assert ours == pytest.approx(ref, abs=1e-12)


def test_map_skips_classes_without_positives():
  rng = np.random.default_rng(1)
  targets = (rng.random((100, 5)) < 0.3).astype(np.float32)
  targets[:, 2] = 0
  scores = rng.normal(size=(100, 5))
  keep = [0, 1, 3, 4]
  ref = skm.average_precision_score(targets[:, keep], scores[:, keep], average="macro")
  assert metrics.mean_average_precision(scores, targets) == pytest.approx(ref, abs=1e-12)


@pytest.mark.parametrize("quantise", [False, True])
def test_auc_and_d_prime_match_sklearn_scipy(quantise):
  rng = np.random.default_rng(2)
  targets = (rng.random((250, 6)) < 0.3).astype(np.float32)
  scores = rng.normal(size=(250, 6)) + targets
  if quantise:
    scores = np.round(scores * 2)
  auc = skm.roc_auc_score(targets, scores, average="macro")
  assert metrics.mean_roc_auc(scores, targets) == pytest.approx(auc, abs=1e-12)
  assert metrics.d_prime(scores, targets) == pytest.approx(np.sqrt(2) * stats.norm.ppf(auc), abs=1e-10)


def test_d_prime_of_gaussians():
  # Two unit Gaussians d apart have AUC Phi(d / sqrt 2): d' recovers d.
  rng = np.random.default_rng(3)
  n = 200_000
  scores = np.r_[rng.normal(0, 1, n), rng.normal(1.3, 1, n)]
  targets = np.r_[np.zeros(n), np.ones(n)]
  assert metrics.d_prime(scores[:, None], targets[:, None]) == pytest.approx(1.3, abs=0.02)


def test_bad_input_errors():
  with pytest.raises(ValueError, match="same shape"):
    metrics.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
  with pytest.raises(ValueError, match="no class"):
    metrics.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2)))
  with pytest.raises(ValueError, match="NaN"):
    metrics.mean_average_precision(np.full((3, 1), np.nan), np.ones((3, 1)))
  with pytest.raises(ValueError, match="outside"):
    metrics.multi_hot([[0], [5]], 3)
