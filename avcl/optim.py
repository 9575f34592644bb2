"""Optimizers (AdamW, LARS), the warm-up + cosine learning-rate schedule and weight-decay masks.

Large-batch contrastive training (SimCLR, MMV, the paper's lineage) uses LARS with linear warm-up and cosine
decay; AdamW is the default for the small embedded run. In both, weight decay (and, for LARS, the layer-wise
trust ratio) applies only to weight matrices and convolution kernels: biases, normalisation scales/offsets
and the learned temperature are excluded, because decaying them only fights the normalisation.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from avcl import config_check

OPTIMIZERS = ("adamw", "lars")


def check_config(c: config_check.Checker) -> None:
  """The `optim.*` fields (`c` on config.optim); with the whole config, warmup_steps < train.num_steps."""
  c.choice("name", OPTIMIZERS)
  c.real("learning_rate", 0, lo_open=True)
  num_steps = c.root.peek("train.num_steps") if c.root else None
  c.integer("warmup_steps", 0, num_steps - 1 if config_check.is_int(num_steps) and num_steps >= 1 else None)
  c.real("end_learning_rate_fraction", 0, 1)
  c.real("weight_decay", 0)
  c.real("b1", 0, 1, hi_open=True)
  c.real("b2", 0, 1, hi_open=True)
  c.real("lars_trust_coefficient", 0, lo_open=True)
  c.real("grad_clip_norm", 0)


def learning_rate_schedule(optim_cfg: ml_collections.ConfigDict, num_steps: int) -> Callable[[Any], Any]:
  """lr(step): linear warm-up to the peak over `warmup_steps`, then cosine decay to
  `end_learning_rate_fraction * peak` at `num_steps`.

  The warm-up counts from 1 (lr(0) = peak / warmup_steps), so the first step already moves the
  parameters; with warmup_steps = 0 the decay starts at the peak.
  """
  peak = float(optim_cfg.learning_rate)
  warmup = int(optim_cfg.warmup_steps)
  end = peak * float(optim_cfg.end_learning_rate_fraction)
  decay_steps = max(1, num_steps - warmup)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = peak * jnp.minimum(1.0, (step + 1.0) / max(warmup, 1))
    progress = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    cosine = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
    return jnp.where(step < warmup, warm, cosine)

  return schedule


def _path_str(path) -> str:
  return jax.tree_util.keystr(path).lower()


def decay_mask(params: Any) -> Any:
  """True for leaves that get weight decay: arrays of rank >= 2 (kernels, embeddings).

  Rank-1 leaves are biases and normalisation scales/offsets; scalars include the temperature. Any leaf
  whose path mentions "temperature" is excluded whatever its rank.
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, x: bool(jnp.ndim(x) >= 2 and "temperature" not in _path_str(path)), params)


def make_optimizer(optim_cfg: ml_collections.ConfigDict, num_steps: int
                   ) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
  """(optax transformation, learning-rate schedule) for `optim_cfg` (fields in configs/default.py)."""
  schedule = learning_rate_schedule(optim_cfg, num_steps)
  name = optim_cfg.name
  if name == "adamw":
    tx = optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, weight_decay=optim_cfg.weight_decay,
                     mask=decay_mask)
  elif name == "lars":
    tx = optax.lars(schedule, weight_decay=optim_cfg.weight_decay, weight_decay_mask=decay_mask,
                    trust_coefficient=optim_cfg.lars_trust_coefficient, trust_ratio_mask=decay_mask,
                    momentum=optim_cfg.b1)
  else:
    raise ValueError(f"optim.name={name!r} must be one of {', '.join(map(repr, OPTIMIZERS))}")
  if optim_cfg.grad_clip_norm > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip_norm), tx)
  return tx, schedule
