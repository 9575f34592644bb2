"""AVModel: the audio and video encoders with their projection heads, built from `config.model`.

Inputs and outputs (see docs/design.md, `avcl.models`):
  inputs keys: `logmel` f32[b, frames, mels], `logmel2` (a second log-mel view through the same encoder
  and head as `logmel`), `wave` f32[b, samples], `video` f32[b, t, h, w, 3] (normalised frames).
  __call__ -> {key: f32[b, embed_dim]} projected and L2-normalised; encode -> f32[b, feature_dim].
"""
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from avcl import config_check
from avcl.evaluate import config as eval_config
from avcl.evaluate.config import ENCODE_LAYERS
from avcl.models import cnn14, res1dnet, resnet_audio, tsm_resnet
from avcl.models.batch_norm import BatchNorm, set_bn_groups
from avcl.models.conv import CPU_CONV_LIBRARIES, IM2COL_MAX_POSITIONS, ConvImpl
from avcl.models.heads import ProjectionHead, l2_normalize

# The encoders, each a module that owns its name, its slot (config.model.<slot>), its fields' checks and how
# it is built from them: adding an encoder is writing its module and listing it here.
ENCODER_MODULES = (cnn14, resnet_audio, res1dnet, tsm_resnet)
SLOTS = ("logmel", "wave", "video")
ENCODERS = {slot: tuple(m.NAME for m in ENCODER_MODULES if m.SLOT == slot) for slot in SLOTS}
_BY_NAME = {m.NAME: m for m in ENCODER_MODULES}
# Input key -> encoder (and head) that embeds it: the embedding names loss.pairs may use.
INPUT_ENCODER = {"logmel": "logmel", "logmel2": "logmel", "wave": "wave", "video": "video"}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# config.model.bn_backward: BatchNorm's train-mode backward (batch_norm.py): the hand-written VJP or autodiff's.
BN_BACKWARDS = ("custom_vjp", "autodiff")


def check_config(c: config_check.Checker) -> dict[str, bool | None]:
  """The `model.*` fields (`c` on config.model), each encoder checking its own.

  Returns {slot: True when it names an encoder, False when empty, None when the name is unknown (already
  reported: checks that need that encoder do not blame it a second time)}.
  """
  present = {}
  for slot in SLOTS:
    s = c.section(slot)
    name = s.choice("name", ENCODERS[slot] + ("",))
    # Every encoder of the slot checks its fields (all are documented in configs/default.py, used or not);
    # the named one first, so that its own limits are the message when a field breaks both.
    for m in sorted((m for m in ENCODER_MODULES if m.SLOT == slot), key=lambda m: m.NAME != name):
      m.check_config(s, named=m.NAME == name)
    present[slot] = bool(name) if name in ENCODERS[slot] + ("",) else None
  if not any(present.values()) and all(v is not None for v in present.values()):
    c.error(f"{c.prefix.rstrip('.')}: at least one of {', '.join(c.label(s + '.name') for s in SLOTS)} must "
            "name an encoder")
  c.integer("embed_dim", 1)
  c.integer("head_hidden", 0)
  c.choice("dtype", tuple(DTYPES))
  c.boolean("bn_sync")
  c.boolean("remat")
  c.integer("remat_every", 1)
  # Speed options (same values and gradients to float32 rounding; configs stored before them lack them).
  c.choice("bn_backward", BN_BACKWARDS)
  c.integer("im2col_max_positions", 0)
  c.choice("cpu_conv_library", CPU_CONV_LIBRARIES)
  if c.root:
    _check_eval_features(c, present)
  return present


def _check_eval_features(c: config_check.Checker, present: dict[str, bool | None]) -> None:
  """eval.features='stats' needs an encoder with a `stats` layer; checked before training, so that a run
  does not train for hours and then fail to evaluate."""
  features = c.root.peek("eval.features")
  features = eval_config.defaults().features if features is None else features
  slot = "logmel" if c.peek("logmel.name") else "wave"  # The audio encoder downstream tasks use.
  name = c.peek(f"{slot}.name")
  with_stats = [m.NAME for m in ENCODER_MODULES if hasattr(m.ENCODER, "stats")]
  if features == "stats" and present.get(slot) is not None and name not in with_stats:
    c.root.error(f"eval.features='stats' needs the {' or '.join(with_stats)} log-mel encoder (it pools CNN14's "
                 f"last conv map), but downstream tasks would use {c.label(slot)}.name={name!r}: set "
                 "eval.features to 'pooled' or 'output'")


def _positive_int(value, field):
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f"config.model.{field} must be an integer >= 1, got {value!r}")


def validate_model_config(model_cfg) -> None:
  """Raises ConfigError (a ValueError) naming every out-of-range field of `config.model`."""
  config_check.validate(check_config, model_cfg, "config.model.")


def set_speed_options(model: nnx.Module, *, bn_backward: str = BN_BACKWARDS[0],
                      im2col_max_positions: int = IM2COL_MAX_POSITIONS) -> nnx.Module:
  """Sets the speed options on every BatchNorm and convolution of `model` (in place; returns it).

  The options change how the step is computed, not what: values and gradients agree with the plain path
  to float32 rounding (tests/test_models.py). bn_backward: "custom_vjp" or "autodiff" (BatchNorm's
  train-mode backward); im2col_max_positions: convolutions onto 2-D maps of at most this many positions
  run as one matmul over patches (0: XLA's convolution everywhere). They are options of the model, not
  module globals, so that a benchmark builds each variant side by side.
  """
  for _, module in nnx.iter_modules(model):
    if isinstance(module, BatchNorm):
      module.custom_vjp = bn_backward == "custom_vjp"
    elif isinstance(module, nnx.Conv) and isinstance(module.conv_general_dilated, ConvImpl):
      module.conv_general_dilated = ConvImpl(im2col_max_positions=int(im2col_max_positions))
  return model


class AVModel(nnx.Module):
  """Encoders (`encoders[name]`) and projection heads (`heads[name]`) for name in logmel/wave/video."""

  def __init__(self, encoders: dict[str, nnx.Module], heads: dict[str, nnx.Module]):
    self.encoders = nnx.Dict(encoders)
    self.heads = nnx.Dict(heads)

  def _encoder_for(self, key: str) -> str:
    if key not in INPUT_ENCODER:
      raise ValueError(f"unknown model input {key!r}; expected keys among {tuple(INPUT_ENCODER)}")
    enc = INPUT_ENCODER[key]
    if enc not in self.encoders:
      raise ValueError(f"input {key!r} was given but the model has no {enc} encoder "
                       f"(config.model.{enc}.name is empty); encoders present: {tuple(self.encoders)}")
    return enc

  def encode(self, name: str, x: jax.Array, *, train: bool = False, layer: str = "output") -> jax.Array:
    """Encoder features before the head: x -> f32[batch, feature_dim].

    layer: "output", the encoder's output (the head's input; for CNN14 and Res1dNet31 after their fc and
    ReLU); or "pooled", the globally pooled conv features before that fc (same dim; for encoders without
    an fc the two are the same); or "stats", the mean and standard deviation over time of the last conv
    map with its frequency axis kept (CNN14 only; 2 x frequency bins x channels).
    """
    if layer not in ENCODE_LAYERS:
      raise ValueError(f"encode layer must be one of {ENCODE_LAYERS}, got {layer!r}")
    enc = self._encoder_for(name)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise ValueError(f"input {name!r} must be floating point (log-mel, waveform in [-1, 1] or normalised "
                       f"frames), got dtype {x.dtype}")
    module = self.encoders[enc]
    if layer == "stats" and not hasattr(module, "stats"):
      raise ValueError(f"encode layer 'stats' is available for the cnn14 log-mel encoder only; the {enc} "
                       f"encoder is {type(module).__name__}: use 'pooled' or 'output'")
    fn = getattr(module, layer, module.__call__) if layer != "output" else module.__call__
    return fn(x, train=train).astype(jnp.float32)

  def __call__(self, inputs: dict[str, jax.Array], *, train: bool) -> dict[str, jax.Array]:
    """{key: input} -> {key: f32[batch, embed_dim]} projected, L2-normalised embeddings."""
    out = {}
    for key, x in inputs.items():
      enc = self._encoder_for(key)
      out[key] = l2_normalize(self.heads[enc](self.encode(key, x, train=train), train=train))
    return out

  @property
  def feature_dims(self) -> dict[str, int]:
    return {enc: m.feature_dim for enc, m in self.encoders.items()}

  @property
  def audio_feature_dim(self) -> int:
    """Feature dim of the audio encoder used downstream: log-mel when present, else waveform."""
    for enc in ("logmel", "wave"):
      if enc in self.encoders:
        return self.encoders[enc].feature_dim
    raise ValueError("the model has no audio encoder (config.model.logmel.name and wave.name are empty)")


def build_model(model_cfg, audio_cfg, *, rngs: nnx.Rngs, bn_groups: int = 1) -> AVModel:
  """Builds the AVModel of `config.model` (encoders whose name is empty are absent).

  bn_groups: the number of devices over which the batch axis is sharded (the trainer passes
  `mesh.size`). Used only when `model_cfg.bn_sync` is False: BatchNorm then takes statistics per device
  shard (see batch_norm.py); with bn_sync (the default) statistics are over the whole global batch.
  """
  validate_model_config(model_cfg)
  _positive_int(bn_groups, "bn_groups (build_model argument)")
  groups = 1 if model_cfg.bn_sync else int(bn_groups)
  dtype = DTYPES[model_cfg.dtype]
  # Blocks per rematerialised group (stack.run_blocks); 0: off. Configs stored before remat_every: 1.
  remat = int(model_cfg.get("remat_every", 1)) if model_cfg.get("remat", False) else 0
  encoders, heads = {}, {}
  for enc in ENCODERS:
    if not model_cfg[enc].name:
      continue
    encoders[enc] = _BY_NAME[model_cfg[enc].name].build(model_cfg[enc], audio_cfg, dtype=dtype,
                                                          bn_groups=groups, remat=remat, rngs=rngs)
    heads[enc] = ProjectionHead(encoders[enc].feature_dim, model_cfg.embed_dim,
                                hidden=model_cfg.head_hidden, bn_groups=groups, rngs=rngs)
  return set_speed_options(AVModel(encoders, heads),
                           bn_backward=model_cfg.get("bn_backward", BN_BACKWARDS[0]),
                           im2col_max_positions=model_cfg.get("im2col_max_positions", IM2COL_MAX_POSITIONS))


def count_params(module: Any) -> int:
  """Number of parameter scalars (nnx.Param leaves; works on `nnx.eval_shape` abstract modules)."""
  leaves = jax.tree.leaves(nnx.state(module, nnx.Param))
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in leaves))


def param_counts(model: AVModel) -> dict[str, int]:
  """{"<enc>_encoder": n, "<enc>_head": n for each encoder present, "total": n}."""
  counts = {}
  for enc in model.encoders:
    counts[f"{enc}_encoder"] = count_params(model.encoders[enc])
    counts[f"{enc}_head"] = count_params(model.heads[enc])
  counts["total"] = count_params(model)
  return counts


def model_summary(model: AVModel) -> str:
  """A table of parameter counts per encoder and head, with feature dims."""
  rows = [("part", "params", "feature_dim")]
  for enc, m in model.encoders.items():
    rows.append((f"{enc} encoder ({type(m).__name__})", f"{count_params(m):,}", str(m.feature_dim)))
    rows.append((f"{enc} head", f"{count_params(model.heads[enc]):,}", ""))
  rows.append(("total", f"{count_params(model):,}", ""))
  w = [max(len(r[i]) for r in rows) for i in range(3)]
  return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:>{w[1]}}  {r[2]:>{w[2]}}".rstrip() for r in rows)


__all__ = ["AVModel", "build_model", "count_params", "param_counts", "model_summary",
           "validate_model_config", "set_bn_groups", "set_speed_options"]
