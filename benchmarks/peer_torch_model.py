r"""The PyTorch half of benchmarks/peer_torch.py: layer-for-layer copies of avcl's log-mel encoders and a
worker that times their SGD step on request.

Runs under a Python that has torch (the separate venv `python -m benchmarks.peer_torch --setup` makes),
never in avcl's own environment, so it imports neither jax nor avcl. The driver starts it as

    .venv-torch/bin/python -m benchmarks.peer_torch_model

and speaks JSON lines over stdin/stdout, one request per line, so that the two frameworks' steps can be
interleaved (round robin) on the same cores:
  {"build": spec}       -> {"params": [[name, shape], ...]} (after two warm-up steps)
  {"step": true}        -> {"ms": wall milliseconds of one SGD step}
  {"forward": weights}  -> {"out": embeddings of the fixed batch, eval mode} (weights: {name: nested list})
  {"profile": steps}    -> {"ops": [[aten op, input shapes, self CPU ms per step], ...]} (torch.profiler)
where spec = {"model": "resnet" | "cnn14", "width", "depth", "blocks", "batch", "frames", "n_mels",
"lr", "seed"}.

The copies follow avcl/models/resnet_audio.py and cnn14.py module for module, in PyTorch's own layout
(NCHW, OIHW kernels), as a PyTorch user would write them. Two details are matched so that both compute the
same function (tests/test_peer_torch.py compares outputs when this venv exists): BatchNorm momentum 0.01
(flax's 0.99 counted the other way) and eps 1e-5; a stride-2 3x3 convolution pads (0, 1) on each spatial
axis, as XLA's "SAME" does on even sizes (PyTorch's padding=1 would pad (1, 1) and shift the grid).
The loss is the one the JAX side uses: 0.5 * mean((z - target)^2) with a fixed random target.
"""
import json
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _conv(cin, cout, k, stride):
  if k == 3 and stride == 2:  # XLA's SAME on an even size: pad (0, 1), not (1, 1).
    return nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(cin, cout, 3, stride=2, padding=0, bias=False))
  return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


def _bn(c, cls=nn.BatchNorm2d):
  return cls(c, eps=1e-5, momentum=0.01)


class BasicBlock2d(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.conv1 = _conv(cin, cout, 3, stride)
    self.bn1 = _bn(cout)
    self.conv2 = _conv(cout, cout, 3, 1)
    self.bn2 = _bn(cout)
    nn.init.zeros_(self.bn2.weight)  # avcl's zero-initialised last scale
    if stride != 1 or cin != cout:
      self.proj = _conv(cin, cout, 1, stride)
      self.proj_bn = _bn(cout)
    else:
      self.proj = None

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.proj is None else self.proj_bn(self.proj(x))
    return F.relu(y + shortcut)


class ResNetAudio(nn.Module):
  def __init__(self, n_mels, width, depth, blocks):
    super().__init__()
    self.bn0 = _bn(n_mels, nn.BatchNorm1d)
    self.stem = _conv(1, width, 3, 1)
    self.stem_bn = _bn(width)
    layers, cin = [], width
    for i in range(depth):
      for j in range(blocks):
        cout = width * 2 ** i
        layers.append(BasicBlock2d(cin, cout, 2 if (i > 0 and j == 0) else 1))
        cin = cout
    self.blocks = nn.Sequential(*layers)

  def forward(self, x):  # [b, t, f]
    x = self.bn0(x.transpose(1, 2)).transpose(1, 2)[:, None]  # [b, 1, t, f]
    x = F.relu(self.stem_bn(self.stem(x)))
    x = self.blocks(x).mean(dim=3)  # [b, c, t]
    return x.amax(dim=2) + x.mean(dim=2)


class ConvBlock(nn.Module):
  def __init__(self, cin, cout, pool):
    super().__init__()
    self.pool = pool
    self.conv1 = _conv(cin, cout, 3, 1)
    self.bn1 = _bn(cout)
    self.conv2 = _conv(cout, cout, 3, 1)
    self.bn2 = _bn(cout)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    return F.avg_pool2d(x, 2) if self.pool else x


class Cnn14(nn.Module):
  def __init__(self, n_mels, width, depth):
    super().__init__()
    self.bn0 = _bn(n_mels, nn.BatchNorm1d)
    channels = [width * 2 ** i for i in range(depth)]
    self.blocks = nn.Sequential(*[ConvBlock(cin, cout, i < depth - 1)
                                  for i, (cin, cout) in enumerate(zip([1] + channels[:-1], channels))])
    self.fc = nn.Linear(channels[-1], channels[-1])

  def forward(self, x):
    x = self.bn0(x.transpose(1, 2)).transpose(1, 2)[:, None]
    x = self.blocks(x).mean(dim=3)  # [b, c, t]
    x = F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1)  # count_include_pad, as PANNs
    return F.relu(self.fc(x.amax(dim=2) + x.mean(dim=2)))


def build(spec):
  if spec["model"] == "resnet":
    return ResNetAudio(spec["n_mels"], spec["width"], spec["depth"], spec["blocks"])
  if spec["model"] == "cnn14":
    return Cnn14(spec["n_mels"], spec["width"], spec["depth"])
  raise ValueError(f"unknown model {spec['model']!r}")


class Bench:
  def __init__(self, spec):
    torch.manual_seed(spec["seed"])
    self.model = build(spec).train()
    rng = np.random.default_rng(spec["seed"])
    self.x = torch.from_numpy(rng.standard_normal((spec["batch"], spec["frames"], spec["n_mels"]), np.float32))
    with torch.no_grad():
      dim = self.model(self.x[:2]).shape[-1]
    self.target = torch.from_numpy(rng.standard_normal((spec["batch"], dim), np.float32))
    self.opt = torch.optim.SGD(self.model.parameters(), lr=spec["lr"])
    for _ in range(2):
      self.step()

  def step(self):
    self.opt.zero_grad(set_to_none=True)
    loss = 0.5 * torch.mean(torch.square(self.model(self.x) - self.target))
    loss.backward()
    self.opt.step()
    return loss.item()

  def profile(self, steps):
    """[[op, input shapes, self CPU ms per step]] of `steps` SGD steps, most expensive first."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
      for _ in range(steps):
        self.step()
    rows = [[e.key, str(e.input_shapes), e.self_cpu_time_total / 1e3 / steps]
            for e in prof.key_averages(group_by_input_shape=True)]
    return sorted(rows, key=lambda r: -r[2])

  def forward(self, weights):
    model = self.model.eval()
    tensors = {n: t for n, t in list(model.named_parameters()) + list(model.named_buffers())
               if not n.endswith("num_batches_tracked")}
    if set(weights) != set(tensors):  # every weight set, none unknown: no silent default left in place
      raise ValueError(f"weights: missing {sorted(set(tensors) - set(weights))}, "
                       f"unknown {sorted(set(weights) - set(tensors))}")
    with torch.no_grad():
      for name, t in tensors.items():
        t.copy_(torch.tensor(weights[name], dtype=t.dtype))
      out = model(self.x).numpy()
    model.train()
    return out


def serve(stdin=sys.stdin, stdout=sys.stdout):
  bench = None
  for line in stdin:
    req = json.loads(line)
    if "build" in req:
      bench = Bench(req["build"])
      reply = {"params": [[n, list(p.shape)] for n, p in bench.model.named_parameters()],
               "threads": torch.get_num_threads(), "version": torch.__version__}
    elif "step" in req:
      t = time.perf_counter()
      bench.step()
      reply = {"ms": 1e3 * (time.perf_counter() - t)}
    elif "profile" in req:
      reply = {"ops": bench.profile(int(req["profile"]))}
    elif "forward" in req:
      reply = {"out": bench.forward(req["forward"]).tolist()}
    else:
      raise ValueError(f"unknown request {req!r}")
    stdout.write(json.dumps(reply) + "\n")
    stdout.flush()


if __name__ == "__main__":
  serve()
