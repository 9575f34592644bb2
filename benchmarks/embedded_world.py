r"""Generation time and size of the embedded world, and how hard its tasks are for a plain log-mel probe.

    python -m benchmarks.embedded_world --output /tmp/avcl_world [--clips N] [--workers W] [--reuse]

Prints the machine's core count, the wall time and size on disk of `data_pipeline.world` (skipped with
--reuse when OUTPUT already holds a world), then for each task a logistic-regression probe on the mean and
standard deviation over time of the log-mel spectrogram (librosa, the default config's 64 mels), trained on
`train` and scored on `test` (accuracy, or macro mAP for `sound_events`) beside chance. A task where this probe
is at chance or near 1 would not tell encoders apart.
"""
import argparse
import json
import os
import time

import numpy as np


def _dir_bytes(root: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files)


def _logmel_stats(clips) -> np.ndarray:
  """-> f32[clips, 2 * 64]: per-band mean and std over time of log(mel power + 1e-6)."""
  import librosa
  feats = []
  for c in clips:
    mel = librosa.feature.melspectrogram(y=c.audio, sr=c.sample_rate, n_fft=512, win_length=400,
                                         hop_length=160, n_mels=64, fmin=60.0, fmax=7800.0)
    logmel = np.log(mel + 1e-6)
    feats.append(np.concatenate([logmel.mean(axis=1), logmel.std(axis=1)]))
  return np.asarray(feats, np.float32)


def probe(root: str, task: str) -> tuple[float, float, int, int]:
  """-> (score, chance, n_train, n_test) of the log-mel probe on `task`."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import average_precision_score
  from sklearn.multiclass import OneVsRestClassifier
  from sklearn.preprocessing import StandardScaler

  from data_pipeline import schema
  with open(os.path.join(root, "tasks", task, "task.json")) as f:
    info = json.load(f)
  data = {s: list(schema.read_clips(schema.list_shards(os.path.join(root, "tasks", task), s)))
          for s in ("train", "test")}
  scaler = StandardScaler().fit(_logmel_stats(data["train"]))
  x_train, x_test = (scaler.transform(_logmel_stats(data[s])) for s in ("train", "test"))
  if info["multi_label"]:
    def multi_hot(clips):
      y = np.zeros((len(clips), info["num_classes"]))
      for i, c in enumerate(clips):
        y[i, c.label_index] = 1
      return y
    y_train, y_test = multi_hot(data["train"]), multi_hot(data["test"])
    keep = (y_train.sum(0) > 0) & (y_test.sum(0) > 0)  # AP is undefined for a class absent from test.
    clf = OneVsRestClassifier(LogisticRegression(max_iter=2000, C=0.1)).fit(x_train, y_train[:, keep])
    score = average_precision_score(y_test[:, keep], clf.predict_proba(x_test), average="macro")
    chance = float(y_test[:, keep].mean())  # AP of a random ranking = the positive rate.
  else:
    y_train = np.array([c.label_index[0] for c in data["train"]])
    y_test = np.array([c.label_index[0] for c in data["test"]])
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(x_train, y_train)
    score = float(clf.score(x_test, y_test))
    chance = 1.0 / info["num_classes"]
  return float(score), chance, len(x_train), len(x_test)


def main():
  parser = argparse.ArgumentParser(prog="python -m benchmarks.embedded_world", description=__doc__.split("\n")[0])
  parser.add_argument("--output", required=True)
  parser.add_argument("--clips", type=int, default=None)
  parser.add_argument("--workers", type=int, default=None)
  parser.add_argument("--reuse", action="store_true", help="probe the world already in --output")
  args = parser.parse_args()
  from data_pipeline.world import generator
  print(f"cores: {os.cpu_count()}")
  if not (args.reuse and os.path.exists(os.path.join(args.output, "world.json"))):
    start = time.time()
    generator.generate(args.output, clips=args.clips, workers=args.workers, progress=False)
    print(f"generate: {time.time() - start:.1f} s")
  with open(os.path.join(args.output, "world.json")) as f:
    world = json.load(f)
  print(f"world: {world['total_clips']} clips (--clips {world['clips']}), "
        f"{_dir_bytes(args.output) / 2**20:.1f} MiB on disk")
  for task in generator.TASKS:
    score, chance, n_train, n_test = probe(args.output, task)
    metric = "mAP" if task == "sound_events" else "accuracy"
    print(f"logmel probe {task:13s} {metric} {score:.3f} (chance {chance:.3f}; train {n_train}, test {n_test})")


if __name__ == "__main__":
  main()
