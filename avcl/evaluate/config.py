"""The `eval` config section: its defaults, filled into older runs' configs, and its validation.

`configs/default.py` takes its `eval` section from `defaults()`; the library never reads `configs/`. Config
files load without JAX, so this module imports only ml_collections and numpy: the names it checks against
are copies of `avcl.evaluate.probes.PROBES` and `avcl.models.model.ENCODE_LAYERS`, which
tests/test_layers.py keeps equal.
"""
from __future__ import annotations

import ml_collections
import numpy as np

# BatchNorm calibration runs its windows through the encoder as one batch: this bounds its memory.
MAX_BN_CALIBRATION_WINDOWS = 4096
PROBES = ("linear", "mlp")  # The keys of avcl.evaluate.probes.PROBES.
ENCODE_LAYERS = ("output", "pooled", "stats")  # avcl.models.model.ENCODE_LAYERS: what AVModel.encode returns.


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
  e.baselines = ("random_init", "logmel")  # Baselines scored beside the pretrained encoder.
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


def validate_eval_config(e) -> None:
  """Raises ValueError naming the config.eval field and its allowed range."""
  def bad(field, value, allowed):
    raise ValueError(f"config.eval.{field} must be {allowed}, got {value!r}")
  if not e.tasks:
    bad("tasks", e.tasks, "a non-empty tuple of task names")
  if e.probe not in PROBES:
    bad("probe", e.probe, f"one of {sorted(PROBES)}")
  if e.features not in ENCODE_LAYERS:
    bad("features", e.features, f"one of {ENCODE_LAYERS}")
  for b in e.baselines:
    if b not in ("random_init", "logmel"):
      bad("baselines", e.baselines, "a tuple drawn from ('random_init', 'logmel')")
  for field in ("window_seconds", "hop_seconds", "timestamp_window_seconds", "timestamp_hop_seconds",
                "finetune_learning_rate"):
    if not float(e[field]) > 0:
      bad(field, e[field], "> 0")
  for field, lo in (("batch_size", 1), ("mlp_hidden", 1), ("finetune_steps", 1),
                    ("max_examples_per_split", 0), ("audioset_sample_rate", 0)):
    if not isinstance(e[field], (int, np.integer)) or isinstance(e[field], bool) or e[field] < lo:
      bad(field, e[field], f"an integer >= {lo}")
  n = e.bn_calibration_windows
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 0 <= n <= MAX_BN_CALIBRATION_WINDOWS:
    bad("bn_calibration_windows", n, f"an integer in [0, {MAX_BN_CALIBRATION_WINDOWS}] (0: keep the initial "
        "statistics)")


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
