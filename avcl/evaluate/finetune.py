"""Full fine-tuning of the audio encoder on a downstream task (slow on CPU; `config.eval.finetune`).

A copy of the encoder gets a linear classifier on its pooled features; both train with Adam on windows
of the training clips (each window carries its clip's labels). BatchNorm keeps the checkpoint's running
statistics (eval mode) while its scale and bias train: with small fine-tuning batches and few steps, batch
statistics would leave running averages (momentum 0.99) far from the data the test split is normalised
with, and train and test would see different networks. A clip's logits
are the classifier applied to the mean of its windows' features (the clip embedding of embed.py), which
for a linear classifier is the mean of the windows' logits. The step with the best validation score
(checked every `eval_every` steps) is kept and scored on the test split.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx

from avcl import frontend as frontend_lib
from avcl.evaluate import embed as embed_lib
from avcl.evaluate import metrics, probes


class _Classifier(nnx.Module):
  """AVModel audio encoder + linear head: windows f32[b, samples] -> logits f32[b, classes]."""

  def __init__(self, model, encoder: str, num_classes: int, *, rngs: nnx.Rngs):
    self.model = model
    self.encoder = encoder
    self.head = nnx.Linear(model.encoders[encoder].feature_dim, num_classes, rngs=rngs)

  def features(self, x, frontend, *, train: bool):
    return self.model.encode(self.encoder, frontend(x), train=train)


def _split_windows(task, split, window, hop):
  """All windows of a split: (f32[m, window], clip index int[m], labels int[n] or f32[n, C])."""
  windows, owner, labels = [], [], []
  for i, ex in enumerate(task.examples(split)):
    w = embed_lib.frame_windows(ex.audio, window, hop)
    windows.append(w)
    owner.append(np.full(w.shape[0], i))
    labels.append(ex.labels)
  if not windows:
    raise ValueError(f"fine-tuning {task.name}: split {split} is empty")
  if task.multi_label:
    y = metrics.multi_hot(labels, task.num_classes)
  else:
    y = np.asarray([l[0] for l in labels], np.int32)
  return np.concatenate(windows), np.concatenate(owner), y


def finetune_task(model, config, task, *, steps: int | None = None, batch_size: int = 32,
                  learning_rate: float | None = None, eval_every: int = 50,
                  progress: bool = True) -> probes.ProbeResult:
  """Fine-tunes a copy of `model`'s audio encoder on `task`; returns the test score at the best step."""
  e = config.eval
  steps = int(steps or e.finetune_steps)
  learning_rate = float(learning_rate or e.finetune_learning_rate)
  sr = int(config.audio.sample_rate)
  window, hop = int(round(e.window_seconds * sr)), int(round(e.hop_seconds * sr))
  encoder = embed_lib.audio_encoder_name(model)
  frontend = frontend_lib.from_config(config.audio) if encoder == "logmel" else (lambda x: x)
  data = {s: _split_windows(task, s, window, hop) for s in ("train", "validation", "test")}
  xtr, owner_tr, ytr_clip = data["train"]
  ytr = ytr_clip[owner_tr]  # Each window carries its clip's labels.
  multi_label = task.multi_label

  clf = _Classifier(nnx.clone(model), encoder, task.num_classes, rngs=nnx.Rngs(int(config.seed)))
  opt = nnx.Optimizer(clf, optax.adam(learning_rate), wrt=nnx.Param)

  @nnx.jit
  def train_step(clf, opt, x, y):
    def loss_fn(clf):
      logits = clf.head(clf.features(x, frontend, train=False))
      if multi_label:
        return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, y), -1))
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    loss, grads = nnx.value_and_grad(loss_fn)(clf)
    opt.update(clf, grads)
    return loss

  @nnx.jit
  def features(clf, x):
    return clf.features(x, frontend, train=False)

  def clip_logits(split):
    x, owner, _ = data[split]
    feats = []
    for i in range(0, x.shape[0], batch_size):
      chunk = x[i:i + batch_size]
      pad = batch_size - chunk.shape[0]
      if pad:
        chunk = np.concatenate([chunk, np.zeros((pad, chunk.shape[1]), np.float32)])
      feats.append(np.asarray(features(clf, jnp.asarray(chunk)))[:batch_size - pad])
    feats = np.concatenate(feats)
    n = int(owner.max()) + 1
    pooled = np.zeros((n, feats.shape[1]), np.float64)
    np.add.at(pooled, owner, feats)
    pooled /= np.bincount(owner, minlength=n)[:, None]
    return np.asarray(clf.head(jnp.asarray(pooled, jnp.float32)))

  rng = np.random.default_rng(int(config.seed))
  batch_size_train = min(batch_size, xtr.shape[0])
  best = (-np.inf, None, 0)
  for step in tqdm.trange(1, steps + 1, desc=f"{task.name} fine-tune", leave=False, disable=not progress):
    idx = rng.choice(xtr.shape[0], batch_size_train, replace=False)
    train_step(clf, opt, jnp.asarray(xtr[idx]), jnp.asarray(ytr[idx]))
    if step % eval_every == 0 or step == steps:
      s = probes.score(clip_logits("validation"), data["validation"][2], multi_label)
      if s > best[0]:
        best = (s, jax.tree.map(np.asarray, nnx.state(clf)), step)
  nnx.update(clf, best[1])
  logits = clip_logits("test")
  extra = {"d_prime": metrics.d_prime(logits, data["test"][2])} if multi_label else {}
  return probes.ProbeResult(
      metric=task.metric, score=probes.score(logits, data["test"][2], multi_label), val_score=float(best[0]),
      hparams={"optimizer": "adam", "learning_rate": learning_rate, "batch_size": batch_size_train,
               "steps": best[2]},
      n_train=int(ytr_clip.shape[0]), n_val=int(data["validation"][2].shape[0]),
      n_test=int(data["test"][2].shape[0]), extra=extra)
