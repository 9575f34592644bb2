"""Probes on frozen embeddings: a linear classifier and a one-hidden-layer MLP, in JAX/optax.

Protocol (the usual linear-evaluation one): features are standardised with the training split's mean and
standard deviation; each hyperparameter setting is trained on the training split only; the setting (and,
for Adam, the training step) with the best validation score is kept; its test score is reported.

The linear probe minimises  mean_i CE(x_i W + b, y_i) + l2 * ||W||^2  (softmax cross-entropy for
single-label tasks, sigmoid cross-entropy summed over classes for multi-label ones). With L-BFGS it is
solved to convergence, so it is the same estimator as scikit-learn's `LogisticRegression(C)` with
l2 = 1 / (2 C n_train); the L2 strength is picked on the validation split (a line search sets the step,
so there is no learning rate). With Adam (the MLP probe, or `optimizer="adam"`), L2 strength and learning
rate are picked together on the validation split, and minibatches make it usable on large sets.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm

from avcl.evaluate import config as eval_config
from avcl.evaluate import metrics

# Strongest first: on a tie of validation scores the stronger penalty wins.
LINEAR_L2_GRID = (1.0, 3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5)
MLP_L2_GRID = (1e-2, 1e-3, 1e-4)
LR_GRID = (3e-3, 1e-3, 3e-4)


@dataclasses.dataclass(frozen=True)
class Split:
  """Embeddings and labels of one split.

  x: f32[n, dim]; y: int[n] class indices (single-label) or f32[n, classes] multi-hot (multi-label).
  """
  x: np.ndarray
  y: np.ndarray

  def __post_init__(self):
    if self.x.ndim != 2:
      raise ValueError(f"Split.x must be [n, dim], got shape {self.x.shape}")
    if self.y.shape[0] != self.x.shape[0]:
      raise ValueError(f"Split.x has {self.x.shape[0]} rows but Split.y has {self.y.shape[0]}")

  @property
  def n(self) -> int:
    return int(self.x.shape[0])


@dataclasses.dataclass
class ProbeResult:
  """What one probe measured. `score` is on the test split, in the task's metric, in [0, 1]."""
  metric: str
  score: float
  val_score: float
  hparams: dict[str, Any]
  n_train: int
  n_val: int
  n_test: int
  extra: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. d_prime for mAP tasks.


def standardize(train_x: np.ndarray, *others: np.ndarray, eps: float = 1e-8) -> list[np.ndarray]:
  """Z-scores every array with the training split's per-feature mean and std (f32[n, dim] each).

  A constant feature (std below eps) is only centred, not divided by ~0.
  """
  train_x = np.asarray(train_x, np.float64)
  mean = train_x.mean(axis=0)
  std = train_x.std(axis=0)
  std = np.where(std < eps, 1.0, std)
  return [((np.asarray(a, np.float64) - mean) / std).astype(np.float32) for a in (train_x, *others)]


def _pad_columns(x: np.ndarray, multiple: int) -> np.ndarray:
  pad = -x.shape[1] % multiple
  return np.pad(x, ((0, 0), (0, pad))) if pad else x


def score(logits: np.ndarray, y: np.ndarray, multi_label: bool) -> float:
  """The task metric: mAP for multi-label tasks, top-1 accuracy otherwise."""
  if multi_label:
    return metrics.mean_average_precision(logits, y)
  return metrics.accuracy(logits, y)


def _loss(logits, y, multi_label: bool):
  """Mean over examples of the cross-entropy. logits f[n, C]; y int[n] or f[n, C]."""
  if multi_label:
    return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, y), axis=-1))
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def _forward(params, x):
  """Linear ({"w", "b"}) or one-hidden-layer ReLU MLP ({"w1", "b1", "w", "b"}). x f[n, d] -> f[n, C]."""
  if "w1" in params:
    x = jax.nn.relu(x @ params["w1"] + params["b1"])
  return x @ params["w"] + params["b"]


def _penalty(params):
  return sum(jnp.sum(v ** 2) for k, v in params.items() if k.startswith("w"))


def _init_params(key, dim: int, num_classes: int, hidden: int):
  if hidden == 0:  # Zeros: the convex problem's solution does not depend on the start.
    return {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}
  k1, k2 = jax.random.split(key)
  return {"w1": jax.random.normal(k1, (dim, hidden)) * math.sqrt(2.0 / dim), "b1": jnp.zeros((hidden,)),
          "w": jax.random.normal(k2, (hidden, num_classes)) * math.sqrt(1.0 / hidden),
          "b": jnp.zeros((num_classes,))}


@functools.partial(jax.jit, static_argnames=("num_classes", "multi_label", "iterations"))
def fit_linear_lbfgs(x, y, l2, *, num_classes: int, multi_label: bool, iterations: int = 300):
  """Full-batch L-BFGS (zoom line search) on the L2-regularised linear probe.

  Args:
    x: f32[n, dim] standardised features; y: int32[n] or f32[n, classes]; l2: scalar penalty on W.
  Returns:
    params {"w": f32[dim, classes], "b": f32[classes]} and the loss at each iteration, f32[iterations].
  """
  params = _init_params(None, x.shape[1], num_classes, 0)

  def objective(p):
    return _loss(_forward(p, x), y, multi_label) + l2 * _penalty(p)

  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(objective)

  def step(carry, _):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
    return (optax.apply_updates(p, updates), state), value

  (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=iterations)
  return params, losses


def _adam(learning_rate):
  # The learning rate lives in the optimizer state, so one compiled step serves the whole grid.
  return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate)


@functools.partial(jax.jit, static_argnames=("multi_label", "steps", "batch_size"))
def _adam_chunk(params, opt_state, key, x, y, l2, *, multi_label: bool, steps: int, batch_size: int):
  """`steps` Adam steps; minibatches of `batch_size` drawn with replacement (0: full batch)."""
  opt = _adam(0.0)  # Its update reads the learning rate from opt_state.

  def step(carry, k):
    p, s = carry

    def objective(p):
      if batch_size == 0:
        return _loss(_forward(p, x), y, multi_label) + l2 * _penalty(p)
      idx = jax.random.randint(k, (batch_size,), 0, x.shape[0])
      return _loss(_forward(p, x[idx]), y[idx], multi_label) + l2 * _penalty(p)

    value, grad = jax.value_and_grad(objective)(p)
    updates, s = opt.update(grad, s, p)
    return (optax.apply_updates(p, updates), s), value

  (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(key, steps))
  return params, opt_state, losses


_predict = jax.jit(_forward)


def fit_adam(train: Split, val: Split, *, l2: float, lr: float, num_classes: int, multi_label: bool,
             hidden: int = 0, steps: int = 2000, eval_every: int = 100, batch_size: int = 256,
             seed: int = 0):
  """Adam on minibatches; keeps the parameters at the step with the best validation score.

  Returns (params, best validation score, best step).
  """
  key = jax.random.key(seed)
  key, init_key = jax.random.split(key)
  params = _init_params(init_key, train.x.shape[1], num_classes, hidden)
  opt_state = _adam(lr).init(params)
  x, y = jnp.asarray(train.x), jnp.asarray(train.y, jnp.float32 if multi_label else jnp.int32)
  batch_size = 0 if batch_size >= train.n else batch_size
  best = (-np.inf, None, 0)
  for done in range(eval_every, steps + 1, eval_every):
    key, k = jax.random.split(key)
    params, opt_state, _ = _adam_chunk(params, opt_state, k, x, y, l2, multi_label=multi_label,
                                       steps=eval_every, batch_size=batch_size)
    s = score(np.asarray(_predict(params, val.x)), val.y, multi_label)
    if s > best[0]:
      best = (s, params, done)
  return best[1], best[0], best[2]


def _check_inputs(train: Split, val: Split, test: Split, num_classes: int, multi_label: bool):
  for name, split in (("train", train), ("validation", val), ("test", test)):
    if split.n == 0:
      raise ValueError(f"probe: the {name} split is empty")
    if split.x.shape[1] != train.x.shape[1]:
      raise ValueError(f"probe: {name} features have dim {split.x.shape[1]}, train has {train.x.shape[1]}")
    if multi_label and (split.y.ndim != 2 or split.y.shape[1] != num_classes):
      raise ValueError(f"probe: multi-label {name} labels must be [n, {num_classes}], got {split.y.shape}")
    if not multi_label:
      if split.y.ndim != 1:
        raise ValueError(f"probe: single-label {name} labels must be [n], got {split.y.shape}")
      if split.y.min() < 0 or split.y.max() >= num_classes:
        raise ValueError(f"probe: {name} labels outside [0, {num_classes})")
    if not np.all(np.isfinite(split.x)):
      raise ValueError(f"probe: {name} features contain NaN or inf")


def _result(params, val_score, hparams, train, val, test, multi_label) -> ProbeResult:
  logits = np.asarray(_predict(params, test.x))
  extra = {}
  if multi_label:
    extra["d_prime"] = metrics.d_prime(logits, test.y)
  return ProbeResult(metric="mAP" if multi_label else "accuracy",
                     score=score(logits, test.y, multi_label), val_score=float(val_score),
                     hparams=hparams, n_train=train.n, n_val=val.n, n_test=test.n, extra=extra)


def linear_probe(train: Split, val: Split, test: Split, *, num_classes: int, multi_label: bool,
                 optimizer: str = "lbfgs", l2_grid: Sequence[float] = LINEAR_L2_GRID,
                 lr_grid: Sequence[float] = LR_GRID, iterations: int = 300, steps: int = 2000,
                 seed: int = 0, progress: bool = True, desc: str = "linear probe") -> ProbeResult:
  """Linear probe with hyperparameters picked on validation. Inputs are standardised here."""
  _check_inputs(train, val, test, num_classes, multi_label)
  # Zero feature columns up to a multiple of 128: their weights stay exactly 0 (no gradient but the L2
  # term), so the solution is unchanged, and embeddings of different widths share one compiled solver.
  xtr, xva, xte = (_pad_columns(x, 128) for x in standardize(train.x, val.x, test.x))
  train, val, test = Split(xtr, train.y), Split(xva, val.y), Split(xte, test.y)
  y = jnp.asarray(train.y, jnp.float32 if multi_label else jnp.int32)
  best = (-np.inf, None, None)
  if optimizer == "lbfgs":
    for l2 in tqdm.tqdm(l2_grid, desc=desc, leave=False, disable=not progress):
      params, _ = fit_linear_lbfgs(jnp.asarray(xtr), y, l2, num_classes=num_classes,
                                   multi_label=multi_label, iterations=iterations)
      s = score(np.asarray(_predict(params, xva)), val.y, multi_label)
      if s > best[0]:
        best = (s, params, {"optimizer": "lbfgs", "l2": l2, "iterations": iterations})
  elif optimizer == "adam":
    grid = list(itertools.product(l2_grid, lr_grid))
    for l2, lr in tqdm.tqdm(grid, desc=desc, leave=False, disable=not progress):
      params, s, step = fit_adam(train, val, l2=l2, lr=lr, num_classes=num_classes,
                                 multi_label=multi_label, steps=steps, seed=seed)
      if s > best[0]:
        best = (s, params, {"optimizer": "adam", "l2": l2, "learning_rate": lr, "steps": step})
  else:
    raise ValueError(f"linear_probe: optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
  return _result(best[1], best[0], best[2], train, val, test, multi_label)


def mlp_probe(train: Split, val: Split, test: Split, *, num_classes: int, multi_label: bool,
              hidden: int = 512, l2_grid: Sequence[float] = MLP_L2_GRID,
              lr_grid: Sequence[float] = LR_GRID, steps: int = 2000, seed: int = 0,
              progress: bool = True, desc: str = "mlp probe") -> ProbeResult:
  """One-hidden-layer ReLU MLP probe trained with Adam; L2, learning rate and step picked on validation."""
  _check_inputs(train, val, test, num_classes, multi_label)
  if hidden < 1:
    raise ValueError(f"mlp_probe: hidden must be >= 1, got {hidden}")
  xtr, xva, xte = standardize(train.x, val.x, test.x)
  train, val, test = Split(xtr, train.y), Split(xva, val.y), Split(xte, test.y)
  best = (-np.inf, None, None)
  for l2, lr in tqdm.tqdm(list(itertools.product(l2_grid, lr_grid)), desc=desc, leave=False,
                          disable=not progress):
    params, s, step = fit_adam(train, val, l2=l2, lr=lr, num_classes=num_classes,
                               multi_label=multi_label, hidden=hidden, steps=steps, seed=seed)
    if s > best[0]:
      best = (s, params, {"optimizer": "adam", "hidden": hidden, "l2": l2, "learning_rate": lr,
                          "steps": step})
  return _result(best[1], best[0], best[2], train, val, test, multi_label)


# The probe names are eval_config.PROBES (config files check eval.probe without JAX), in its order.
PROBES = dict(zip(eval_config.PROBES, (linear_probe, mlp_probe), strict=True))


def run_probe(kind: str, train: Split, val: Split, test: Split, **kwargs) -> ProbeResult:
  """Dispatches to `linear_probe` or `mlp_probe` by name."""
  if kind not in PROBES:
    raise ValueError(f"probe must be one of {sorted(PROBES)}, got {kind!r}")
  return PROBES[kind](train, val, test, **kwargs)
