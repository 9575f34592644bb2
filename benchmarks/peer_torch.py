r"""avcl's log-mel encoders against layer-for-layer PyTorch copies: one SGD step each, on the same CPU cores.

    python -m benchmarks.peer_torch --setup          # once: makes .venv-torch (PyTorch 2.13.0 CPU) beside .venv
    python -m benchmarks.peer_torch [--widths 8,32,64] [--rounds 7] [--no-default] [--profile] [--dtype bfloat16]
        [--cpu-conv-library eigen,ynnpack]

Models: `avcl.models.resnet_audio.ResNetAudio` (depth 4, 2 blocks per stage) at each width, batch 32,
96 frames x 64 mels; then the default config's log-mel encoder (configs/default.py: CNN14 width 8, depth 4)
at the default global batch (64) and clip length (151 frames x 64 mels). Both sides run
loss = 0.5 * mean((z - target)^2) on the encoder's output z with a fixed random target, its gradient, and a
plain SGD update (lr 1e-3), BatchNorm in train mode (batch statistics, running averages updated). The avcl
step is one jitted function with the parameters and batch statistics donated; the PyTorch step is eager
(zero_grad, forward, backward, optimizer.step) with PyTorch's default threads (all cores).

PyTorch never enters avcl's environment: `--setup` makes a separate venv (.venv-torch, git-ignored) and
installs torch there; the PyTorch half (benchmarks/peer_torch_model.py) runs in a child process of that
venv's Python, and the two steps are timed round robin (avcl step, PyTorch step, avcl step, ...; only one
runs at a time, the other waits on a pipe), so load from other jobs on a shared machine hits both alike.
Without the venv only the avcl column is printed. The copy's parameter shapes are checked against avcl's
(every parameter, by name) before timing; tests/test_peer_torch.py also compares the two models' outputs.

--cpu-conv-library: the library XLA:CPU runs avcl's convolutions with (config model.cpu_conv_library; default:
the default config's). Several, comma-separated, are each compiled and timed in the same round robin, one
column each: the before/after of that option in one run.

--dtype bfloat16 runs avcl's encoder with that compute dtype (config model.dtype; parameters and BatchNorm
stay float32), PyTorch's stays float32: a speed figure only, the values differ beyond float32 rounding.

--profile then traces both steps per op (avcl: jax.profiler, one event per executed HLO op; PyTorch:
torch.profiler, self CPU time per aten op) and prints, per model, avcl's op time by kind (convolution
forward, input gradient and weight gradient, each by result shape; layout transposes; other fusions, i.e.
BatchNorm, ReLU, residual adds, pooling and the update) beside PyTorch's most expensive ops. A backward
convolution whose result is [a, kh, kw, b] with a 3x3 or 1x1 window is counted as a weight gradient
(XLA:CPU runs those as YNNPACK fusions, often without the JAX op name), any other as an input gradient.
"""
import argparse
import collections
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA:CPU emits a profiler event per executed HLO op only with this flag (for --profile); untraced it costs
# nothing (benchmarks/step_profile.py).
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from avcl import host_memory  # noqa: E402
from avcl.models import conv as conv_lib  # noqa: E402
from avcl.models.cnn14 import Cnn14  # noqa: E402
from avcl.models.resnet_audio import ResNetAudio  # noqa: E402
from benchmarks.step_profile import trace_ops  # noqa: E402
from configs import default as default_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_VENV = os.path.join(ROOT, ".venv-torch")
TORCH_PIN = "torch==2.13.0"  # the CPU wheel on this machine's disk (a bare `torch` would fetch a CUDA build)
LR = 1e-3


def setup(venv=TORCH_VENV):
  """Makes `venv` with PyTorch (CPU) and numpy: the only place this project installs torch."""
  if not os.path.exists(os.path.join(venv, "bin", "python")):
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
  subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", TORCH_PIN, "numpy"],
                 check=True)


def specs(widths, default=True):
  """The models compared: ResNetAudio at each width, then the default config's log-mel encoder."""
  out = [{"label": f"resnet width {w}", "model": "resnet", "width": w, "depth": 4, "blocks": 2, "batch": 32,
          "frames": 96, "n_mels": 64} for w in widths]
  if default:
    c = default_config.get_config()
    frames = 1 + int(round(c.data.clip_seconds * c.audio.sample_rate)) // c.audio.hop_length
    m = c.model.logmel
    out.append({"label": f"default: {m.name} width {m.width}", "model": m.name, "width": m.width,
                "depth": m.depth, "blocks": m.blocks, "batch": c.train.global_batch_size, "frames": frames,
                "n_mels": c.audio.n_mels})
  for s in out:
    s.update(lr=LR, seed=0)
  return out


def build_model(spec, **options):
  """The avcl encoder of `spec` (float32, one BatchNorm group); options go to its constructor."""
  rngs = nnx.Rngs(spec["seed"])
  if spec["model"] == "resnet":
    return ResNetAudio(n_mels=spec["n_mels"], width=spec["width"], depth=spec["depth"], blocks=spec["blocks"],
                       rngs=rngs, **options)
  if spec["model"] == "cnn14":
    return Cnn14(n_mels=spec["n_mels"], width=spec["width"], depth=spec["depth"], rngs=rngs, **options)
  raise ValueError(f"unknown model {spec['model']!r}")


def inputs(spec, dim):
  """The fixed batch and target (the PyTorch side draws the same numbers with the same seed)."""
  rng = np.random.default_rng(spec["seed"])
  x = rng.standard_normal((spec["batch"], spec["frames"], spec["n_mels"]), np.float32)
  return x, rng.standard_normal((spec["batch"], dim), np.float32)


class JaxBench:
  """The jitted SGD step of build_model(spec, **options) on the fixed batch, its convolutions run by
  `cpu_conv_library` when compiled for the CPU (config model.cpu_conv_library)."""

  def __init__(self, spec, cpu_conv_library=None, **options):
    model = build_model(spec, **options)
    self.cpu_conv_library = cpu_conv_library or default_config.get_config().model.cpu_conv_library
    self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    self.params, self.rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
    self.x, self.target = map(jnp.asarray, inputs(spec, model(jnp.zeros((2,) + self.x_shape(spec)[1:]),
                                                              train=False).shape[-1]))
    graphdef = self.graphdef

    def step(params, rest, x, target):
      def loss_fn(params, rest):
        m = nnx.merge(graphdef, params, rest)
        z = m(x, train=True)
        return 0.5 * jnp.mean(jnp.square(z - target)), nnx.to_pure_dict(nnx.state(m, nnx.Not(nnx.Param)))
      (loss, rest), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rest)
      return jax.tree.map(lambda p, g: p - LR * g, params, grads), rest, loss

    options = conv_lib.compiler_options(self.cpu_conv_library, jax.default_backend())
    self.compiled = jax.jit(step, donate_argnums=(0, 1), compiler_options=options).lower(
        self.params, self.rest, self.x, self.target).compile()
    for _ in range(2):
      self.step()

  @staticmethod
  def x_shape(spec):
    return (spec["batch"], spec["frames"], spec["n_mels"])

  def step(self):
    t = time.perf_counter()
    self.params, self.rest, loss = self.compiled(self.params, self.rest, self.x, self.target)
    jax.block_until_ready(loss)
    return 1e3 * (time.perf_counter() - t)


def torch_names(params):
  """{avcl parameter path: (PyTorch name, how to lay the array out for PyTorch)} for the copies in
  benchmarks/peer_torch_model.py. Conv kernels HWIO -> OIHW, dense [in, out] -> [out, in], BatchNorm
  scale -> weight; a stride-2 3x3 conv is `.1` of a (ZeroPad2d, Conv2d) Sequential there."""
  out = {}
  for path, value in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    path = tuple(keys)
    leaf, parent = keys[-1], ".".join(keys[:-1])
    if leaf == "kernel" and value.ndim == 4:
      out[path] = (parent + ".weight", lambda a: np.transpose(a, (3, 2, 0, 1)))
    elif leaf == "kernel":
      out[path] = (parent + ".weight", lambda a: a.T)
    else:
      out[path] = (parent + {"scale": ".weight", "bias": ".bias", "mean": ".running_mean",
                             "var": ".running_var"}[leaf], lambda a: a)
  return out


class TorchWorker:
  """The PyTorch half in a child process of the torch venv's Python (benchmarks/peer_torch_model.py)."""

  def __init__(self, python):
    self.proc = subprocess.Popen([python, "-m", "benchmarks.peer_torch_model"], cwd=ROOT, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)

  def ask(self, **request):
    self.proc.stdin.write(json.dumps(request) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"the PyTorch worker exited (code {self.proc.wait()})")
    return json.loads(line)

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def check_shapes(bench, torch_params):
  """Raises unless every avcl parameter has a PyTorch counterpart of the same size and vice versa."""
  theirs = {name: tuple(shape) for name, shape in torch_params}
  mine = {}
  leaves = {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): v
            for path, v in jax.tree_util.tree_flatten_with_path(bench.params)[0]}
  for path, (name, layout) in torch_names(bench.params).items():
    if name not in theirs:  # stride-2 3x3 conv: wrapped with its padding in a Sequential
      name = name.rsplit(".", 1)[0] + ".1." + name.rsplit(".", 1)[1]
    mine[name] = tuple(layout(np.zeros(leaves[path].shape, np.float32)).shape)
  if mine != theirs:
    raise AssertionError(f"parameter shapes differ: only avcl {sorted(set(mine.items()) - set(theirs.items()))}"
                         f", only PyTorch {sorted(set(theirs.items()) - set(mine.items()))}")
  return sum(int(np.prod(s)) for s in mine.values())


def op_kind(opcode, shape, op_name, name):
  """The profile's kind of one HLO op (see the module docstring)."""
  inner = shape.split("[")[1].split("]")[0] if "[" in shape else ""  # f32[] (scalars), tuples: no dims
  dims = [int(d) for d in inner.split(",")] if inner.replace(",", "").isdigit() else []
  backward = "transpose(" in op_name
  if opcode == "convolution" or "conv_general_dilated" in op_name or name.startswith("ynn_fusion"):
    if len(dims) == 4 and tuple(dims[1:3]) in ((3, 3), (1, 1)):
      return "conv weight grad"
    if "conv_general_dilated" in op_name or opcode == "convolution":
      return "conv input grad" if backward else "conv forward"
  if opcode in ("transpose", "copy") or "transpose" in name or name.startswith("copy"):
    return "layout transposes and copies"
  return ("other fusions, backward" if backward else "other fusions, forward") + " (BatchNorm, ReLU, adds, pooling)"


# The profile's row for step time no traced op accounts for. XLA:CPU's Eigen convolutions (model.cpu_conv_library
# "eigen", the default) run asynchronously on Eigen's thread pool: their trace events cover the dispatch, not the
# work, so most of their time shows up only here (and partly in ops that ran beside them).
UNTRACED = "not attributed to a traced op (step time minus op time: Eigen convolutions run asynchronously)"


def profile_avcl(bench, steps=3):
  """({kind: ms per step}, {(kind, result shape): ms per step}) of bench's step, from a trace; kinds has an
  UNTRACED row when the traced ops sum to less than the step's wall time (timed around the same steps)."""
  walls = []

  def run():
    walls.append(bench.step())
  ms, ops = trace_ops(run, bench.compiled.as_text(), steps)
  kinds, convs = collections.Counter(), collections.Counter()
  for name, t in ms.items():
    opcode, shape, op_name = ops[name]
    kind = op_kind(opcode, shape, op_name, name)
    kinds[kind] += t
    if kind.startswith("conv"):
      convs[(kind, shape.split("{")[0])] += t
  wall = float(np.median(walls[-steps:]))  # trace_ops runs once untraced, then `steps` traced calls
  if wall > sum(kinds.values()):
    kinds[UNTRACED] = wall - sum(kinds.values())
  return kinds, convs


def print_profile(label, kinds, convs, torch_ops, top=12):
  total = sum(kinds.values())
  print(f"\n{label}: avcl, {total:.0f} ms per step by kind (traced op time, plus the untraced remainder of the step)")
  print("\n| kind | ms | % |\n| --- | ---: | ---: |")
  for kind, t in kinds.most_common():
    print(f"| {kind} | {t:.1f} | {100 * t / total:.0f} |")
  print("\n| avcl convolution | result | ms |\n| --- | --- | ---: |")
  for (kind, shape), t in convs.most_common(top):
    print(f"| {kind} | {shape} | {t:.1f} |")
  if torch_ops:
    total = sum(r[2] for r in torch_ops)
    print(f"\n| PyTorch op (self CPU; {total:.0f} ms per step in all) | input shapes | ms |\n| --- | --- | ---: |")
    for op, shapes, t in torch_ops[:top]:
      print(f"| {op} | {shapes[:80]} | {t:.1f} |")


def format_table(rows, torch_version, dtype="float32", libraries=None):
  """Markdown table of rows [(label, avcl ms or [avcl ms per library], PyTorch ms or None)]; `libraries`
  names the avcl columns (model.cpu_conv_library) when there are several."""
  libraries = libraries or [None]
  head, rule = [f"PyTorch {torch_version} ms"], ["---:"]
  for lib in libraries:
    name = f"avcl (jax {jax.__version__}, {dtype}" + (f", {lib} convs" if lib else "") + ")"
    head += [f"{name} ms", f"{name} / PyTorch"]
    rule += ["---:", "---:"]
  lines = ["| model | " + " | ".join(head) + " |", "| --- | " + " | ".join(rule) + " |"]
  for label, mine, theirs in rows:
    cells = ["-" if theirs is None else f"{theirs:,.0f}"]
    for m in (mine if isinstance(mine, (list, tuple)) else [mine]):
      cells += [f"{m:,.0f}", "-" if theirs is None else f"{m / theirs:.2f}x"]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None):
  # What avcl's entry points do on the CPU: keep freed pages mapped for XLA's buffers (avcl/host_memory.py).
  host_memory.apply(platform=jax.default_backend())
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--setup", action="store_true", help=f"make {TORCH_VENV} with {TORCH_PIN} and exit")
  p.add_argument("--widths", default="8,32,64", help="ResNetAudio widths")
  p.add_argument("--rounds", type=int, default=7, help="timed steps per side, interleaved (median reported)")
  p.add_argument("--no-default", dest="default", action="store_false", help="skip the default config's encoder")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="avcl's compute dtype")
  p.add_argument("--cpu-conv-library", dest="libraries",
                 default=default_config.get_config().model.cpu_conv_library,
                 help="avcl's XLA:CPU convolution library, or several comma-separated "
                      f"({', '.join(conv_lib.CPU_CONV_LIBRARIES)})")
  p.add_argument("--profile", action="store_true", help="also trace both steps per op (see above)")
  p.add_argument("--torch_python", default=os.path.join(TORCH_VENV, "bin", "python"),
                 help="a Python with torch (default: the venv --setup makes)")
  args = p.parse_args(argv)
  libraries = args.libraries.split(",")
  if set(libraries) - set(conv_lib.CPU_CONV_LIBRARIES):
    p.error(f"--cpu-conv-library: choose from {', '.join(conv_lib.CPU_CONV_LIBRARIES)}, got {args.libraries!r}")
  if args.setup:
    setup()
    return
  worker = TorchWorker(args.torch_python) if os.path.exists(args.torch_python) else None
  if worker is None:
    print(f"no {args.torch_python}: `python -m benchmarks.peer_torch --setup` makes it; avcl column only")
  print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} CPU cores, load average "
        f"{os.getloadavg()[0]:.1f}; median of {args.rounds} steps per side, round robin")
  rows, version, profiles = [], "-", []
  for spec in specs([int(w) for w in args.widths.split(",")], args.default):
    benches = [JaxBench(spec, lib, dtype=jnp.dtype(args.dtype)) for lib in libraries]
    bench = benches[0]
    theirs = None
    if worker is not None:
      reply = worker.ask(build=spec)
      version = f"{reply['version']} ({reply['threads']} threads)"
      n = check_shapes(bench, reply["params"])
      theirs = []
    mine = [[] for _ in benches]
    for _ in range(args.rounds):
      for times, b in zip(mine, benches):
        times.append(b.step())
      if worker is not None:
        theirs.append(worker.ask(step=True)["ms"])
    if args.profile:
      profiles.append((spec["label"], *profile_avcl(bench),
                       worker.ask(profile=3)["ops"] if worker is not None else None))
    rows.append((spec["label"] + f", batch {spec['batch']}, {spec['frames']}x{spec['n_mels']}",
                 [float(np.median(t)) for t in mine], None if theirs is None else float(np.median(theirs))))
    print(f"  {rows[-1][0]}: avcl " + ", ".join(f"{m:.0f} ms ({lib} convs)" for m, lib in zip(rows[-1][1], libraries))
          + (f", PyTorch {rows[-1][2]:.0f} ms ({n:,} parameters each)" if theirs else ""), flush=True)
  if worker is not None:
    worker.close()
  print()
  print(format_table(rows, version, args.dtype, libraries if len(libraries) > 1 else None))
  for profile in profiles:
    print_profile(*profile)


if __name__ == "__main__":
  main()
