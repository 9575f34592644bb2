"""Checks every config field before anything is built or compiled.

Each problem is reported as `field=value must ...` with the allowed range or values, and all problems are
reported together, so a bad command line fails in a second instead of after a compile, and a typo in one
override does not hide another.

Each section is checked by the module that reads it (`check_config` of avcl.frontend for `audio`,
avcl.augment, avcl.models (each encoder its own fields), avcl.losses, avcl.optim, avcl.evaluate.config for
`eval`), which also runs it on the section it is handed at run time; this module gathers them, and checks
the sections the training loop itself reads (`seed`, `data`, `train`: avcl.train imports this module).
"""
from __future__ import annotations

import ml_collections

from avcl import augment, config_check, frontend, losses, optim
from avcl.config_check import ConfigError  # Raised here; callers catch it as config_validation.ConfigError.
from avcl.evaluate import config as eval_config
from avcl.models import model as model_lib

__all__ = ["MAX_SEED", "ConfigError", "validate_config"]

# Largest config.seed. The seed reaches int64 arithmetic: tf.data's per-process seed is
# seed * 1_000_003 + process_index (data_pipeline/input.py), which stays below 2**63 only for seeds below
# ~9.2e12, and jax.random.key takes at most 64 bits. 2**31 - 1 leaves a wide margin and fits every consumer
# (numpy, jax, tf.data) without wrapping.
MAX_SEED = 2**31 - 1


def _check_data(c: config_check.Checker) -> None:
  c.check("root", lambda v: isinstance(v, str) and v.strip() != "", "be a non-empty path")
  c.boolean("generate_if_missing")
  c.integer("world_clips", 0)
  c.integer("world_task_clips", 0, default=0)  # Configs stored before the field generated tasks as world_clips.
  c.real("clip_seconds", 0, lo_open=True)
  c.real("fps", 0, lo_open=True)
  c.integer("frame_size", 8, 1024)
  c.integer("shuffle_buffer", 1)
  c.boolean("video_random_crop")
  c.boolean("video_flip")


def _check_train(c: config_check.Checker, num_devices: int | None) -> None:
  c.integer("num_steps", 1)
  gbs = c.peek("global_batch_size")
  if num_devices is not None:
    if not (config_check.is_int(gbs) and gbs >= 2 and gbs % num_devices == 0):
      c.fail("global_batch_size", gbs, f"be a positive multiple of the {num_devices} devices "
             "(and >= 2: the contrastive loss needs negatives)")
  elif not (config_check.is_int(gbs) and gbs >= 2):
    c.fail("global_batch_size", gbs, "be an integer >= 2 (the contrastive loss needs negatives)")
  c.integer("log_every", 1)
  c.integer("checkpoint_every", 1)
  c.integer("keep_checkpoints", 1)


def validate_config(cfg: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
  """Raises ConfigError listing every invalid field of `cfg` (fields as in configs/default.py).

  num_devices: devices of the training mesh; when given, train.global_batch_size must be a multiple.
  """
  c = config_check.Checker(cfg)
  c.integer("seed", 0, MAX_SEED)
  _check_data(c.section("data"))
  frontend.check_config(c.section("audio"))
  augment.check_config(c.section("augment"))
  present = model_lib.check_config(c.section("model"))
  losses.check_config(c.section("loss"), model_lib.INPUT_ENCODER, present)
  optim.check_config(c.section("optim"))
  _check_train(c.section("train"), num_devices)
  eval_config.check_config(c.section("eval"))
  c.raise_if_errors()
