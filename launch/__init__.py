"""Launchers: Cloud TPU slices (`tpu`), local GPUs (`gpu`), several local processes (`local`), sweeps.

They build command lines for `python -m avcl.main` and start processes; they never import jax or avcl.
"""
