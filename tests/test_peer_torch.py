"""benchmarks/peer_torch.py: the avcl side's parameter naming for the PyTorch copies, the table, and (when
the PyTorch venv of `python -m benchmarks.peer_torch --setup` exists) that the PyTorch copies compute the
same function as avcl's encoders. Timing is never tested here."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from benchmarks import peer_torch

TINY = {"model": "resnet", "width": 2, "depth": 3, "blocks": 2, "batch": 4, "frames": 16, "n_mels": 8,
        "lr": 1e-3, "seed": 0}
TORCH_PYTHON = os.path.join(peer_torch.TORCH_VENV, "bin", "python")


def _leaves(tree):
  return {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_torch_names_are_unique_and_lay_kernels_out_as_pytorch():
  params = nnx.to_pure_dict(nnx.state(peer_torch.build_model(TINY), nnx.Param))
  names = peer_torch.torch_names(params)
  leaves = _leaves(params)
  assert set(names) == set(leaves)
  assert len({n for n, _ in names.values()}) == len(names)
  name, layout = names[("stem", "kernel")]
  assert name == "stem.weight" and layout(np.zeros(leaves[("stem", "kernel")].shape)).shape == (2, 1, 3, 3)
  name, layout = names[("blocks", "2", "conv1", "kernel")]  # stage 2's first conv: 2 -> 4 channels
  assert name == "blocks.2.conv1.weight" and layout(np.zeros((3, 3, 2, 4))).shape == (4, 2, 3, 3)
  assert names[("blocks", "0", "bn2", "scale")][0] == "blocks.0.bn2.weight"


def test_table_ratio_and_missing_peer():
  table = peer_torch.format_table([("a", 300.0, 150.0), ("b", 80.0, None)], "2.13.0")
  lines = table.splitlines()
  assert lines[2] == "| a | 150 | 300 | 2.00x |"
  assert lines[3] == "| b | - | 80 | - |"
  # Several avcl columns (--cpu-conv-library eigen,ynnpack), each with its ratio, from one round robin.
  table = peer_torch.format_table([("a", [300.0, 450.0], 150.0)], "2.13.0", libraries=["eigen", "ynnpack"])
  head, _, row = table.splitlines()
  assert "eigen convs) ms" in head and "ynnpack convs) / PyTorch" in head
  assert row == "| a | 150 | 300 | 2.00x | 450 | 3.00x |"


@pytest.mark.skipif(not os.path.exists(TORCH_PYTHON),
                    reason="no PyTorch venv (python -m benchmarks.peer_torch --setup)")
@pytest.mark.parametrize("model", ["resnet", "cnn14"])
def test_torch_copy_computes_the_same_function(model):
  spec = dict(TINY, model=model)
  m = peer_torch.build_model(spec)
  graphdef, params, rest = nnx.split(m, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  rng = np.random.default_rng(1)
  # Every weight random (BatchNorm scales and running variances positive), so that no layer hides behind a
  # zero-initialised scale or unit statistics.
  params = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape) * rng.choice([-1, 1], a.shape)
                                              * (0.5 if a.ndim > 1 else 1.0), jnp.float32), params)
  rest = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape), jnp.float32), rest)
  x, _ = peer_torch.inputs(spec, 1)
  ours = np.asarray(nnx.merge(graphdef, params, rest)(jnp.asarray(x), train=False))
  worker = peer_torch.TorchWorker(TORCH_PYTHON)
  try:
    names = dict(worker.ask(build=spec)["params"])
    weights = {}
    for tree in (params, rest):
      for path, (name, layout) in peer_torch.torch_names(tree).items():
        if name.endswith(".weight") and name not in names:
          name = name.rsplit(".", 1)[0] + ".1.weight"  # stride-2 conv inside (ZeroPad2d, Conv2d)
        weights[name] = layout(np.asarray(_leaves(tree)[path])).tolist()
    theirs = np.asarray(worker.ask(forward=weights)["out"])
  finally:
    worker.close()
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(theirs, ours, rtol=2e-4, atol=2e-4 * np.abs(ours).max())
