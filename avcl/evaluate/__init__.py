"""Downstream evaluation: frozen-embedding probes, fine-tuning, baselines and the results report.

Modules: `metrics` (accuracy, mAP, d-prime), `probes` (linear and MLP probes), `embed` (clip and timestamp
embeddings), `tasks` (embedded world, TFDS, AudioSet readers), `finetune`, `report` (results.json/md/png),
`runner` (`evaluate`), `cli` (`python -m avcl.evaluate`).
"""
from avcl.evaluate.runner import evaluate, evaluate_model

__all__ = ["evaluate", "evaluate_model"]
