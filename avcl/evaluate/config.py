"""The `eval` config section: its defaults, filled into older runs' configs, and its checks.

`configs/default.py` takes its `eval` section from `defaults()`; the library never reads `configs/`. Config
files load without JAX, so this module imports only ml_collections and the JAX-free checker; the names
`eval.probe` and `eval.features` take are defined here, and `avcl.evaluate.probes.PROBES` and
`avcl.models.model` (what `AVModel.encode` returns) import them.
"""
from __future__ import annotations

import ml_collections

from avcl import config_check

# BatchNorm calibration runs its windows through the encoder as one batch: this bounds its memory.
MAX_BN_CALIBRATION_WINDOWS = 4096
PROBES = ("linear", "mlp")  # Probes on frozen embeddings (avcl.evaluate.probes.PROBES, in this order).
# What AVModel.encode returns (avcl.models.model; its docstring says what each is): eval.features.
ENCODE_LAYERS = ("output", "pooled", "stats")
BASELINES = ("random_init", "logmel")  # Embeddings scored beside the pretrained encoder.


def defaults() -> ml_collections.ConfigDict:
  """The default `config.eval` (every field, with the one-line meaning of each)."""
  e = ml_collections.ConfigDict()
  e.tasks = ("keyword", "speaker", "language", "instrument", "sound_events")  # Downstream tasks.
  # Embedding window (ours: the training crop, data.clip_seconds); a clip embedding averages windows.
  e.window_seconds = 1.5
  e.hop_seconds = 0.75  # Hop between embedding windows.
  e.batch_size = 64  # Clips per embedding batch.
  # Features probed: "stats" (CNN14 only: mean and std over time of the last conv map, frequency kept; the
  # statistics the log-mel baseline takes of each band), "pooled" (the encoder's globally pooled conv
  # features, before its fc) or "output" (after the fc and ReLU, the projection head's input). Ours:
  # "stats" with 1.5 s windows, picked among {pooled, stats} x {2.0 s, 1.5 s windows} by the mean
  # validation score of the pretrained encoder over the five tasks and three seeds (docs/evaluation.md).
  e.features = "stats"
  e.baselines = BASELINES  # Baselines scored beside the pretrained encoder.
  # random_init is the run's step-0 model; its BatchNorm statistics (mean 0, variance 1 at init, which leaves
  # the raw log-mel, about -14 to +5, unnormalised) are first estimated on this many windows of each task's
  # training clips (0: keep them). At most 4096: the windows go through the encoder as one batch.
  e.bn_calibration_windows = 256
  e.probe = "linear"  # Probe on frozen embeddings: "linear" (softmax/sigmoid) or "mlp".
  e.mlp_hidden = 512  # Hidden width of the MLP probe.
  e.finetune = False  # Also fine-tune the whole encoder per task (slow on CPU); score "finetuned".
  e.finetune_steps = 300  # Fine-tuning steps (best step picked on validation).
  e.finetune_learning_rate = 1e-4  # Adam learning rate for fine-tuning.
  e.timestamp_window_seconds = 1.0  # Window centred on each timestamp of frame-level embeddings.
  e.timestamp_hop_seconds = 0.05  # Hop between timestamps of frame-level (HEAR) embeddings.
  e.max_examples_per_split = 0  # Cap on examples read per split (0: all), for huge datasets.
  e.tfds_data_dir = ""  # TFDS data dir for real datasets ("": TFDS's default, ~/tensorflow_datasets).
  e.audioset_dir = ""  # Directory of AudioSet DMVR TFRecords (balanced_train*, unbalanced_train*, eval*).
  e.audioset_sample_rate = 0  # Rate of AudioSet records lacking audio/sample_rate (0: require it).
  return e


def check_config(c: config_check.Checker) -> None:
  """The `eval.*` fields (`c` on config.eval); with the whole config, windows of at least audio.n_fft samples.

  tasks, window_seconds, hop_seconds, batch_size and baselines are required of a training config; the other
  fields may be absent (older runs lack them): `defaults()` then holds.
  """
  d = defaults()
  c.check("tasks", lambda v: isinstance(v, (tuple, list)) and len(v) >= 1 and all(isinstance(t, str) and t
                                                                                 for t in v),
          "be a non-empty tuple of task names")
  window = c.real("window_seconds", 0, lo_open=True)
  c.real("hop_seconds", 0, lo_open=True)
  c.integer("batch_size", 1)
  c.check("baselines", lambda v: isinstance(v, (tuple, list)) and all(b in BASELINES for b in v),
          f"be a tuple drawn from {BASELINES}")
  c.choice("probe", PROBES, default=d.probe)
  c.choice("features", ENCODE_LAYERS, default=d.features)
  for field in ("timestamp_window_seconds", "timestamp_hop_seconds", "finetune_learning_rate"):
    c.real(field, 0, lo_open=True, default=d[field])
  for field, lo in (("mlp_hidden", 1), ("finetune_steps", 1), ("max_examples_per_split", 0),
                    ("audioset_sample_rate", 0)):
    c.integer(field, lo, default=d[field])
  c.integer("bn_calibration_windows", 0, MAX_BN_CALIBRATION_WINDOWS, why=" (0: keep the initial statistics)",
            default=d.bn_calibration_windows)
  sr, n_fft = (c.root.peek("audio.sample_rate"), c.root.peek("audio.n_fft")) if c.root else (None, None)
  if (config_check.is_int(sr) and config_check.is_int(n_fft) and config_check.is_real(window) and window > 0
      and window * sr < n_fft):
    c.fail("window_seconds", window, f"give at least audio.n_fft={n_fft} samples at {sr} Hz")


def validate_eval_config(e) -> None:
  """Raises ConfigError (a ValueError) naming every out-of-range field of `config.eval`."""
  config_check.validate(check_config, e, "config.eval.")


def with_eval_defaults(config):
  """A copy of `config` whose `eval` section has every field of `defaults()` (older runs lack some)."""
  config = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else config)
  eval_defaults = defaults()
  with config.unlocked():
    if "eval" not in config:
      config.eval = eval_defaults
    for k, v in eval_defaults.items():
      if k not in config.eval:
        config.eval[k] = v
  return config
