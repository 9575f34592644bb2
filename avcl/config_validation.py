"""Checks every config field before anything is built or compiled.

Each problem is reported as `field=value must ...` with the allowed range or values, and all problems are
reported together, so a bad command line fails in a second instead of after a compile, and a typo in one
override does not hide another.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import ml_collections

from avcl import augment, frontend, models
from avcl.evaluate import config as eval_config

# Encoder names avcl.models.build_model accepts ("" = no encoder of that kind).
LOGMEL_ENCODERS = ("cnn14", "resnet")
WAVE_ENCODERS = ("res1dnet31",)
VIDEO_ENCODERS = ("tsm_resnet",)
# Embedding names usable in loss.pairs, and the model field that must name an encoder for each.
PAIR_MEMBERS = {"logmel": "logmel", "logmel2": "logmel", "wave": "wave", "video": "video"}


# Largest config.seed. The seed reaches int64 arithmetic: tf.data's per-process seed is
# seed * 1_000_003 + process_index (data_pipeline/input.py), which stays below 2**63 only for seeds below
# ~9.2e12, and jax.random.key takes at most 64 bits. 2**31 - 1 leaves a wide margin and fits every consumer
# (numpy, jax, tf.data) without wrapping.
MAX_SEED = 2**31 - 1


class ConfigError(ValueError):
  """One or more config fields are invalid; the message lists each with its allowed values."""


def _get(cfg: ml_collections.ConfigDict, path: str) -> Any:
  node = cfg
  for part in path.split("."):
    if part not in node:
      raise KeyError(path)
    node = node[part]
  return node


class _Checker:
  """Collects `field=value must ...` messages."""

  def __init__(self, cfg: ml_collections.ConfigDict):
    self.cfg = cfg
    self.errors: list[str] = []

  def value(self, path: str) -> Any:
    """The field's value, or _MISSING (and an error) when the config lacks it."""
    try:
      return _get(self.cfg, path)
    except KeyError:
      self.errors.append(f"{path} is missing (every field of configs/default.py is required)")
      return _MISSING

  def fail(self, path: str, value: Any, requirement: str) -> None:
    self.errors.append(f"{path}={value!r} must {requirement}")

  def check(self, path: str, ok: Callable[[Any], bool], requirement: str) -> Any:
    v = self.value(path)
    if v is _MISSING:
      return None
    try:
      good = ok(v)
    except (TypeError, ValueError):
      good = False
    if not good:
      self.fail(path, v, requirement)
    return v

  # Typed helpers --------------------------------------------------------------------------------------
  def boolean(self, path: str) -> Any:
    return self.check(path, lambda v: isinstance(v, bool), "be True or False")

  def integer(self, path: str, lo: int | None = None, hi: int | None = None) -> Any:
    return self.check(path, lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi),
                      "be an integer " + _range_text(lo, hi))

  def real(self, path: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> Any:
    def ok(v):
      if not (_is_real(v) and math.isfinite(v)):
        return False
      if lo is not None and (v <= lo if lo_open else v < lo):
        return False
      if hi is not None and (v >= hi if hi_open else v > hi):
        return False
      return True
    return self.check(path, ok, "be a finite number " + _interval_text(lo, hi, lo_open, hi_open))

  def choice(self, path: str, allowed: Iterable[Any]) -> Any:
    allowed = tuple(allowed)
    return self.check(path, lambda v: v in allowed, f"be one of {', '.join(repr(a) for a in allowed)}")


_MISSING = object()


def _is_int(v) -> bool:
  return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v) -> bool:
  return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _range_text(lo, hi) -> str:
  if lo is not None and hi is not None:
    return f"in [{lo}, {hi}]"
  if lo is not None:
    return f">= {lo}"
  if hi is not None:
    return f"<= {hi}"
  return ""


def _interval_text(lo, hi, lo_open, hi_open) -> str:
  if lo is not None and hi is not None:
    return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  if lo is not None:
    return f"{'>' if lo_open else '>='} {lo}"
  if hi is not None:
    return f"{'<' if hi_open else '<='} {hi}"
  return ""


def validate_config(cfg: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
  """Raises ConfigError listing every invalid field of `cfg` (fields as in configs/default.py).

  num_devices: devices of the training mesh; when given, train.global_batch_size must be a multiple.
  """
  c = _Checker(cfg)

  c.integer("seed", 0, MAX_SEED)

  # data ------------------------------------------------------------------------------------------------
  c.check("data.root", lambda v: isinstance(v, str) and v.strip() != "", "be a non-empty path")
  c.boolean("data.generate_if_missing")
  c.integer("data.world_clips", 0)
  c.real("data.clip_seconds", 0, lo_open=True)
  c.real("data.fps", 0, lo_open=True)
  c.integer("data.frame_size", 8, 1024)
  c.integer("data.shuffle_buffer", 1)
  c.boolean("data.video_random_crop")
  c.boolean("data.video_flip")

  # audio -----------------------------------------------------------------------------------------------
  sr = c.integer("audio.sample_rate", 1)
  n_fft = c.integer("audio.n_fft", 2)
  if _is_int(n_fft):
    c.integer("audio.win_length", 1, n_fft)
  else:
    c.integer("audio.win_length", 1)
  c.integer("audio.hop_length", 1)
  n_mels = c.integer("audio.n_mels", 1)
  fmax = _get(cfg, "audio.fmax") if "fmax" in cfg.get("audio", {}) else None
  nyquist = sr / 2 if _is_int(sr) and sr > 0 else None
  c.real("audio.fmin", 0, fmax if _is_real(fmax) else None, hi_open=True)
  c.real("audio.fmax", 0, nyquist, lo_open=True)
  c.choice("audio.mel_scale", ("slaney", "htk"))
  c.real("audio.log_offset", 0, lo_open=True)
  clip_s = cfg.data.get("clip_seconds") if "data" in cfg else None
  if _is_int(sr) and _is_int(n_fft) and _is_real(clip_s) and clip_s > 0 and clip_s * sr < n_fft:
    c.fail("data.clip_seconds", clip_s, f"give at least audio.n_fft={n_fft} samples at {sr} Hz")

  # augment ---------------------------------------------------------------------------------------------
  c.boolean("augment.mix.enabled")
  c.choice("augment.mix.partner", augment.PARTNERS)
  c.choice("augment.mix.distribution", augment.DISTRIBUTIONS)
  c.real("augment.mix.alpha", 0, lo_open=True)
  c.real("augment.mix.max_weight", 0, 0.5)
  c.choice("augment.mix.audio_domain", augment.AUDIO_DOMAINS)
  c.boolean("augment.mix.video")
  c.real("augment.gain_db", 0, 60)
  c.integer("augment.time_masks", 0)
  c.integer("augment.time_mask_frames", 0)
  c.integer("augment.freq_masks", 0)
  if _is_int(n_mels):
    c.integer("augment.freq_mask_bins", 0, n_mels)
  else:
    c.integer("augment.freq_mask_bins", 0)

  # model -----------------------------------------------------------------------------------------------
  present, unknown = {}, set()
  for kind, names in (("logmel", LOGMEL_ENCODERS), ("wave", WAVE_ENCODERS), ("video", VIDEO_ENCODERS)):
    name = c.choice(f"model.{kind}.name", names + ("",))
    present[kind] = bool(name) and name in names
    if name and name not in names:
      unknown.add(kind)  # Already reported; pairs that use it are not blamed a second time.
  c.integer("model.logmel.width", 1)
  c.integer("model.logmel.depth", 1)
  c.integer("model.wave.width", 1)
  c.integer("model.wave.depth", 1)
  c.integer("model.video.width", 1)
  c.check("model.video.blocks",
          lambda v: isinstance(v, (tuple, list)) and len(v) >= 1 and all(_is_int(b) and b >= 1 for b in v),
          "be a non-empty tuple of integers >= 1 (blocks per stage)")
  c.boolean("model.video.bottleneck")
  c.real("model.video.shift_fraction", 0, 0.5)
  c.integer("model.embed_dim", 1)
  c.integer("model.head_hidden", 0)
  c.choice("model.dtype", ("float32", "bfloat16"))
  c.boolean("model.bn_sync")
  if not any(present.values()):
    c.errors.append("model: at least one of model.logmel.name, model.wave.name, model.video.name must name "
                    "an encoder")

  # loss ------------------------------------------------------------------------------------------------
  pairs = c.value("loss.pairs")
  if pairs is not _MISSING:
    active = 0
    for key, weight in pairs.items():
      path = f"loss.pairs.{key}"
      parts = key.split("_")
      if len(parts) != 2 or parts[0] == parts[1] or any(p not in PAIR_MEMBERS for p in parts):
        c.errors.append(f"{path}: pair names must be 'a_b' with a != b among {', '.join(PAIR_MEMBERS)}")
        continue
      if not (_is_real(weight) and math.isfinite(weight) and weight >= 0):
        c.fail(path, weight, "be a finite number >= 0 (0 disables the pair)")
        continue
      if weight > 0:
        active += 1
        for p in parts:
          if not present[PAIR_MEMBERS[p]] and PAIR_MEMBERS[p] not in unknown:
            c.fail(path, weight, f"be 0 because model.{PAIR_MEMBERS[p]}.name is not set "
                   f"(the pair needs the {PAIR_MEMBERS[p]} encoder)")
    if active == 0:
      c.errors.append("loss.pairs: at least one pair must have a weight > 0")
  c.real("loss.temperature", 0, lo_open=True)
  c.boolean("loss.learn_temperature")
  c.choice("loss.impl", ("plain", "tiled", "ring"))
  c.integer("loss.tile_size", 1)
  transit = c.choice("loss.transit_dtype", ("float32", "bfloat16"))
  if transit == "bfloat16" and c.value("loss.impl") == "plain":
    c.fail("loss.transit_dtype", transit, "be 'float32' when loss.impl is 'plain' (bfloat16 is for 'tiled'/'ring')")

  # optim -----------------------------------------------------------------------------------------------
  c.choice("optim.name", ("adamw", "lars"))
  c.real("optim.learning_rate", 0, lo_open=True)
  num_steps = c.integer("train.num_steps", 1)
  if _is_int(num_steps) and num_steps >= 1:
    c.integer("optim.warmup_steps", 0, num_steps - 1)
  else:
    c.integer("optim.warmup_steps", 0)
  c.real("optim.end_learning_rate_fraction", 0, 1)
  c.real("optim.weight_decay", 0)
  c.real("optim.b1", 0, 1, hi_open=True)
  c.real("optim.b2", 0, 1, hi_open=True)
  c.real("optim.lars_trust_coefficient", 0, lo_open=True)
  c.real("optim.grad_clip_norm", 0)

  # train -----------------------------------------------------------------------------------------------
  gbs = c.value("train.global_batch_size")
  gbs = None if gbs is _MISSING else gbs
  if num_devices is not None:
    if not (_is_int(gbs) and gbs >= 2 and gbs % num_devices == 0):
      c.fail("train.global_batch_size", gbs, f"be a positive multiple of the {num_devices} devices "
             "(and >= 2: the contrastive loss needs negatives)")
  elif not (_is_int(gbs) and gbs >= 2):
    c.fail("train.global_batch_size", gbs, "be an integer >= 2 (the contrastive loss needs negatives)")
  c.integer("train.log_every", 1)
  c.integer("train.checkpoint_every", 1)
  c.integer("train.keep_checkpoints", 1)

  # eval ------------------------------------------------------------------------------------------------
  c.check("eval.tasks", lambda v: isinstance(v, (tuple, list)) and all(isinstance(t, str) and t for t in v),
          "be a tuple of task names")
  window = c.real("eval.window_seconds", 0, lo_open=True)
  c.real("eval.hop_seconds", 0, lo_open=True)
  if _is_int(sr) and _is_int(n_fft) and _is_real(window) and window > 0 and window * sr < n_fft:
    c.fail("eval.window_seconds", window, f"give at least audio.n_fft={n_fft} samples at {sr} Hz")
  c.integer("eval.batch_size", 1)
  c.check("eval.baselines", lambda v: isinstance(v, (tuple, list)) and all(isinstance(t, str) for t in v),
          "be a tuple of baseline names")

  c.integer("model.logmel.blocks", 1)
  c.boolean("model.remat")
  c.integer("model.remat_every", 1)
  c.choice("model.bn_backward", ("custom_vjp", "autodiff"))
  c.integer("model.im2col_max_positions", 0)

  if not c.errors:
    # Second line: each part's own checks (model-specific limits such as CNN14's depth, fields a part adds
    # to configs/default.py). They raise on their first problem, so they run once the table above is clean.
    for check in _PART_CHECKS:
      try:
        check(cfg)
      except (ValueError, TypeError) as e:
        c.errors.append(str(e))
  if c.errors:
    raise ConfigError("invalid config:\n  " + "\n  ".join(c.errors))


def _check_frontend(cfg):
  frontend.from_config(cfg.audio)


def _check_augment(cfg):
  augment.validate_config(cfg.augment, prefix="augment.")


def _check_model(cfg):
  models.validate_model_config(cfg.model)


def _check_eval(cfg):
  e = eval_config.with_eval_defaults(cfg).eval
  eval_config.validate_eval_config(e)
  # Checked here, before training, so that a run does not train for hours and then fail to evaluate.
  eval_encoder = "logmel" if cfg.model.logmel.name else "wave"
  if e.features == "stats" and cfg.model[eval_encoder].name != "cnn14":
    raise ValueError(f"eval.features='stats' needs the cnn14 log-mel encoder (it pools CNN14's last conv map), "
                     f"but downstream tasks would use model.{eval_encoder}.name="
                     f"{cfg.model[eval_encoder].name!r}: set eval.features to 'pooled' or 'output'")


_PART_CHECKS = (_check_frontend, _check_augment, _check_model, _check_eval)
