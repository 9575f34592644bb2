"""evaluate() in a 2-process jax.distributed run: collective restore, then process 0 alone evaluates."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from tests.test_eval_checkpoint import write_checkpoint
from tests.test_eval_runner import make_world, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
    import json, sys
    import jax
    jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
    from avcl.evaluate import runner
    results = runner.evaluate(sys.argv[3], progress=False)
    print("RESULT", jax.process_index(), json.dumps(results))
""")


@pytest.mark.multiprocess
def test_two_processes_evaluate_on_process_zero(tmp_path):
  make_world(str(tmp_path / "world"), {"train": 8, "validation": 4, "test": 4})
  config = tiny_config(tmp_path / "world")
  config.eval.tasks = ("keyword",)
  config.eval.baselines = ("logmel",)
  workdir = str(tmp_path / "run")
  write_checkpoint(workdir, config, step=2)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
             PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES="")
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, f"127.0.0.1:{port}", str(i), workdir],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  results = {}
  for out in outs:
    for line in out.splitlines():
      if line.startswith("RESULT "):
        _, index, payload = line.split(" ", 2)
        results[int(index)] = json.loads(payload)
  assert results[1] == {}
  assert results[0]["checkpoint_step"] == 2 and set(results[0]["tasks"]) == {"keyword"}
  with open(os.path.join(workdir, "eval", "results.json")) as f:
    assert json.load(f) == results[0]
