r"""The embedded CPU run at one hour: the default recipe with a wider log-mel encoder, a higher learning rate and
about 6x the default run's steps, on the same embedded world and tasks.

Run (generates the embedded world into $AVCL_DATA or ~/.cache/avcl/embedded on first use, as the default does):

    python -m avcl.main --config configs/cpu_hour.py --workdir workdirs/cpu_hour --mode train_and_eval
    python -m avcl.evaluate --workdir workdirs/cpu_hour --curve   # validation score of every checkpoint

Sized for: a 2-core, 24 GiB CPU machine, about 60 minutes of pretraining when the machine is otherwise quiet
(3,500 steps; width 16 measured at 1.03 s per step against width 8's 0.50 s, 2026-12-02, load average ~1.6).

Why these choices (the selection rule is in docs/evaluation.md, "configs/cpu_hour.py"): at the default budget
the validation mean stops rising halfway through the run (docs/evaluation.md, "The default run's curve"), so
spending the extra budget on the same width-8 encoder for 12x the steps was judged less useful than a wider
encoder for 6x the steps; the learning rate is the best of the first search round's candidates (C, 5e-3).
World, tasks and everything else are the default's: scores are comparable with the default run's table.

Measured (2026-12-02, commit 27006ad's training code, 2-core machine shared with other jobs, the run niced
ahead of them; seed 0): pretraining 79 min wall, 5,988 training CPU-seconds; loss 4.29 -> 1.23 (chance 4.16),
contrastive top-1 65.5% at step 3,500 (29.2% at step 1,200). Test-split mean over the five tasks: pretrained
43.4, its fair random encoder 37.5, pooled log-mel 38.5 (the default run: 48.2); validation mean 50.0 against
the default's 50.9. The curve (docs/evaluation.md, "configs/cpu_hour.py") is flat at ~50 on validation from
step 500 while the contrastive top-1 keeps rising: the issue #15 targets (+25 over random, ahead of log-mel
on every task) are missed, and this recipe is not better than the default on these probes.
"""
from configs import default


def get_config():
  c = default.get_config()
  c.model.logmel.width = 16  # Default 8: 2.1x the step time (1.03 s against 0.50 s on 2 cores).
  c.optim.learning_rate = 5e-3  # Candidate C of the first search round (default budget: +1.6 on validation).
  c.optim.warmup_steps = 200  # The default's 50 of 600, scaled to stay a short fraction of the run.
  c.train.num_steps = 3500  # ~60 min on 2 quiet cores at 1.03 s per step.
  # 14 points on the learning curve, all kept.
  c.train.checkpoint_every = 250
  c.train.keep_checkpoints = 14
  return c
