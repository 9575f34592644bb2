"""Downstream evaluation: frozen-embedding probes, fine-tuning, baselines and the results report.

Modules: `metrics` (accuracy, mAP, d-prime), `probes` (linear and MLP probes), `embed` (clip and timestamp
embeddings), `tasks` (embedded world, TFDS, AudioSet readers), `finetune`, `report` (results.json/md/png),
`config` (the `eval` section's defaults and validation; no JAX, so config files may import it), `runner`
(`evaluate`, `evaluate_model`), `curve` (learning curves), `cli` (`python -m avcl.evaluate`).

Empty on purpose: importing `avcl.evaluate.config` must not load the runner (and JAX) with it.
"""
