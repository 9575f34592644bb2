"""Exit statuses of `python -m avcl.main` that launchers act on (imports nothing: launchers import it).

0            finished (training reached train.num_steps; evaluation, if asked for, wrote its results)
1            a clear error (bad config, refused config change, non-finite loss, missing data or checkpoint)
PREEMPTED    SIGTERM arrived: a checkpoint of the current step was saved and the run stopped early. Not
             finished and not failed: run the same command again to resume it.
"""

# BSD sysexits' EX_TEMPFAIL ("temporary failure; the user is invited to retry"): no other part of the stack
# (Python, absl, JAX, a shell's 128 + signal) exits with it.
PREEMPTED = 75
