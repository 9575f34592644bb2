"""Downstream metrics in numpy: top-1 accuracy, macro average precision (mAP), ROC AUC and d-prime.

Implemented here rather than taken from scikit-learn so that evaluation depends only on numpy/scipy;
tests check each against scikit-learn. Ties between scores are handled the way scikit-learn does:
tied examples enter the precision-recall curve (and the ROC) together, at one threshold.
"""
from __future__ import annotations

import numpy as np
from scipy import special


def _check_pair(scores: np.ndarray, targets: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores, dtype=np.float64)
  targets = np.asarray(targets)
  if scores.shape != targets.shape:
    raise ValueError(f"{name}: scores {scores.shape} and targets {targets.shape} must have the same shape")
  if not np.all(np.isfinite(scores)):
    raise ValueError(f"{name}: scores contain NaN or inf")
  return scores, targets


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Top-1 accuracy.

  Args:
    logits: f[n, classes] scores (any monotone transform of class probabilities).
    labels: int[n] class indices.
  """
  logits = np.asarray(logits)
  labels = np.asarray(labels)
  if logits.ndim != 2 or labels.shape != (logits.shape[0],):
    raise ValueError(f"accuracy: expected logits [n, classes] and labels [n], got {logits.shape} and "
                     f"{labels.shape}")
  if logits.shape[0] == 0:
    raise ValueError("accuracy: no examples")
  return float(np.mean(np.argmax(logits, axis=-1) == labels))


def binary_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  """Average precision of one class: sum_k (R_k - R_{k-1}) P_k over distinct score thresholds.

  Args:
    scores: f[n] detection scores.
    targets: {0, 1}[n]; at least one positive.
  """
  scores, targets = _check_pair(scores, targets, "average_precision")
  targets = targets.astype(bool)
  num_pos = int(targets.sum())
  if num_pos == 0:
    raise ValueError("average_precision: no positive example")
  order = np.argsort(-scores, kind="mergesort")
  scores, targets = scores[order], targets[order]
  # The last index of each group of tied scores: the curve only has a point once the whole group is in.
  last = np.r_[np.flatnonzero(np.diff(scores) != 0), scores.size - 1]
  tp = np.cumsum(targets)[last]
  precision = tp / (last + 1)
  recall = tp / num_pos
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
  """Area under the ROC curve, the Mann-Whitney statistic with ties counted as one half.

  Args:
    scores: f[n] detection scores.
    targets: {0, 1}[n]; at least one positive and one negative.
  """
  scores, targets = _check_pair(scores, targets, "roc_auc")
  targets = targets.astype(bool)
  num_pos = int(targets.sum())
  num_neg = targets.size - num_pos
  if num_pos == 0 or num_neg == 0:
    raise ValueError("roc_auc: needs at least one positive and one negative example")
  # Average ranks (1-based) give each tied group the mean of its ranks, i.e. ties count one half.
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  ranks = np.empty(scores.size, dtype=np.float64)
  starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores) != 0) + 1]
  ends = np.r_[starts[1:], scores.size]
  for s, e in zip(starts, ends):
    ranks[order[s:e]] = 0.5 * (s + 1 + e)
  u = ranks[targets].sum() - num_pos * (num_pos + 1) / 2.0
  return float(u / (num_pos * num_neg))


def _per_class(fn, scores: np.ndarray, targets: np.ndarray, name: str,
               need_negatives: bool) -> np.ndarray:
  scores, targets = _check_pair(scores, targets, name)
  if scores.ndim != 2:
    raise ValueError(f"{name}: expected scores [n, classes], got shape {scores.shape}")
  pos = targets.sum(axis=0)
  valid = pos > 0
  if need_negatives:
    valid &= pos < targets.shape[0]
  if not np.any(valid):
    raise ValueError(f"{name}: no class has both positive and negative examples in the targets")
  values = np.full(scores.shape[1], np.nan)
  for c in np.flatnonzero(valid):
    values[c] = fn(scores[:, c], targets[:, c])
  return values


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
  """Macro mAP: the mean over classes of each class's average precision.

  Classes without a positive example in `targets` have no defined AP and are left out of the mean
  (as in AudioSet evaluations); when every class has positives this equals
  `sklearn.metrics.average_precision_score(targets, scores, average="macro")`.

  Args:
    scores: f[n, classes] detection scores.
    targets: {0, 1}[n, classes] multi-hot labels.
  """
  return float(np.nanmean(_per_class(binary_average_precision, scores, targets, "mAP", False)))


def mean_roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
  """Macro ROC AUC over classes that have both positives and negatives. Same shapes as mAP."""
  return float(np.nanmean(_per_class(binary_roc_auc, scores, targets, "roc_auc", True)))


def d_prime_from_auc(auc: float | np.ndarray) -> float | np.ndarray:
  """d' = sqrt(2) * Phi^-1(AUC): the separation of two unit-variance Gaussians with that AUC."""
  return np.sqrt(2.0) * special.ndtri(auc)


def d_prime(scores: np.ndarray, targets: np.ndarray) -> float:
  """d-prime of the macro ROC AUC (the AudioSet convention). Same shapes as mAP."""
  return float(d_prime_from_auc(mean_roc_auc(scores, targets)))


def multi_hot(label_lists, num_classes: int) -> np.ndarray:
  """f32[n, num_classes] multi-hot matrix from n lists of class indices (checked against the range)."""
  out = np.zeros((len(label_lists), num_classes), np.float32)
  for i, labels in enumerate(label_lists):
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
      raise ValueError(f"label indices {labels.tolist()} of example {i} outside [0, {num_classes})")
    out[i, labels] = 1.0
  return out
