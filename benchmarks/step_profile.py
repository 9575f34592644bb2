r"""Where the default config's train step spends its time: each component compiled and timed on its own.

    python -m benchmarks.step_profile [--config default] [--repeats 5] [--no-convs]

The full jitted train step (avcl.train.make_trainer) is split into the parts it is made of, each jitted
alone at the config's global batch on the same devices, with the same shapes the step sees:
  frontend      log-mel of the waveform batch (avcl.frontend.from_config(config.audio));
  augment       gain, mixing (waveform and frames), SpecAugment, frame normalisation: augment_batch with the
                frontend replaced by a free reshape, so the frontend is not counted twice;
  <enc> fwd+bwd each encoder with its projection head in train mode, forward and the gradient of a fixed
                linear function of its embeddings with respect to its parameters (what the loss's
                backward asks of it);
  loss fwd+bwd  the contrastive loss and its gradient with respect to the embeddings;
  optimizer     the optax update and apply_updates over all trainable parameters.
For each: median wall time, its share of the full step's time, XLA's cost-analysis FLOPs of the compiled
part, achieved FLOP/s and that as a fraction of a large float32 matmul's rate measured in the same run
(the practical ceiling). "sum of parts" vs "full step" shows what fusion across parts saves or costs.
With --trace (default on), the full step is also run under `jax.profiler` and the trace (XLA:CPU emits
one event per executed HLO op) is parsed offline: time per op category and the most expensive ops, with
their HLO shape and the JAX operation they come from.
The last table times every 2-D convolution of the default CNN14 (channels width..8*width) and TSM-ResNet
alone, forward, the input gradient alone, the kernel gradient alone and forward+backward (gradients for
input and kernel; kernel only for the stem, whose input is data), to show whether small-channel
convolutions bind and which gradient does; the FLOP/s columns are of jax.lax.conv_general_dilated, the
last column times avcl.models.conv.conv_general_dilated, what the model runs (im2col onto maps of <= 4
positions, lax otherwise).

Timings share the cores with whatever else runs: compare ratios within one run, not seconds across runs.
"""
import argparse
import collections
import functools
import glob
import os
import re
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA:CPU emits a profiler event per executed HLO op (thunk) only with this flag; it costs nothing untraced.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from avcl import augment as augment_lib  # noqa: E402
from avcl import frontend as frontend_lib  # noqa: E402
from avcl import (  # noqa: E402
  host_memory,
  losses,
  sharding,
  train,
)
from avcl.models import conv as conv_lib  # noqa: E402
from avcl.models import from_config, tsm_resnet  # noqa: E402
from benchmarks.train_step import _flops, _synthetic_batch, matmul_rate  # noqa: E402
from configs import default as default_config  # noqa: E402


def _time_compiled(compiled, args, repeats, donate=False):
  """Median wall seconds of compiled(*args) after a warm-up (donated first arg threaded through)."""
  out = compiled(*args)
  jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    if donate:
      args = (out[0],) + tuple(args[1:])
    t = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def measure(fn, args, repeats, **jit_kwargs):
  """(median seconds, XLA FLOPs, compile seconds) of jax.jit(fn)(*args)."""
  t = time.perf_counter()
  compiled = jax.jit(fn, **jit_kwargs).lower(*args).compile()
  compile_s = time.perf_counter() - t
  return _time_compiled(compiled, args, repeats), _flops(compiled), compile_s


def component_rows(config, repeats):
  """[(name, seconds, flops, compile seconds)] for the parts of the step and the full step."""
  mesh = sharding.make_mesh()
  rng = np.random.default_rng(0)
  batch = sharding.global_batch_from_local(_synthetic_batch(config, rng), mesh)
  b = config.train.global_batch_size
  fe = frontend_lib.from_config(config.audio)
  logmel = fe(batch["audio"])
  rows = []

  rows.append(("frontend (log-mel)",) + measure(fe, (batch["audio"],), repeats))

  t_frames, n_mels = logmel.shape[1:]

  def free_frontend(wave):  # A reshape in place of the log-mel, so that augment excludes the frontend.
    return wave[:, :t_frames * n_mels].reshape(wave.shape[0], t_frames, n_mels)

  def augment(key, batch):
    return augment_lib.augment_batch(key, batch, config.augment, mesh=mesh,
                                     frontend=free_frontend)
  rows.append(("augment (gain, mixing, SpecAugment, frames)",)
              + measure(augment, (jax.random.key(1), batch), repeats))

  model = from_config.build(config, mesh.devices.size)
  # The split the train step uses (train.make_trainer): parameters, and the BatchNorm statistics.
  split_def, params, rest = nnx.split(model, nnx.Param, ...)
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  views = augment_lib.augment_batch(jax.random.key(1), batch, config.augment, mesh=mesh,
                                    frontend=fe)
  needed = sorted(train._model_inputs_needed(config))  # pylint: disable=protected-access
  embeddings = {}
  for name in needed:
    ct = jax.random.normal(jax.random.key(2), (b, config.model.embed_dim))

    def encoder_loss(params, rest, x, ct, name=name):
      m = nnx.merge(split_def, params, rest)
      z = m({name: x}, train=True)[name]
      return jnp.vdot(z, ct), nnx.to_pure_dict(nnx.split(m, nnx.Param, ...)[2])

    grad_fn = jax.value_and_grad(encoder_loss, has_aux=True)
    rows.append((f"{name} encoder+head fwd+bwd",) + measure(grad_fn, (params, rest, views[name], ct), repeats))
    embeddings[name] = nnx.merge(split_def, params, rest)({name: views[name]}, train=True)[name]

  pairs = train._pairs(config)  # pylint: disable=protected-access

  def loss(emb):
    return losses.contrastive_loss(emb, pairs, config.loss.temperature, mesh=mesh, axis=sharding.DATA_AXIS,
                                   impl=config.loss.impl, tile_size=config.loss.tile_size,
                                   transit_dtype=config.loss.transit_dtype)[0]
  rows.append(("contrastive loss fwd+bwd",) + measure(jax.value_and_grad(loss), (embeddings,), repeats))

  trainer = train.make_trainer(config, mesh)
  state = trainer.init()
  trainable = state["params"]  # What the optimizer updates.
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), trainable)

  def update(grads, opt_state, trainable):
    import optax  # pylint: disable=g-import-not-at-top
    updates, opt_state = trainer.tx.update(grads, opt_state, trainable)
    return optax.apply_updates(trainable, updates), opt_state
  rows.append(("optimizer update",) + measure(update, (grads, state["opt_state"], trainable), repeats))

  t = time.perf_counter()
  compiled = trainer.step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t
  step_s = _time_compiled(compiled, (state, batch), repeats, donate=True)
  rows.append(("full train step", step_s, _flops(compiled), compile_s))
  return rows, (compiled, trainer.init(), batch)


def _hlo_ops(hlo_text):
  """{instruction name: (opcode, result shape, jax op_name)} from a compiled module's HLO text."""
  ops = {}
  for line in hlo_text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(", line)
    if m:
      op_name = re.search(r'op_name="([^"]*)"', line)
      ops.setdefault(m.group(1), (m.group(3), m.group(2), op_name.group(1) if op_name else ""))
  return ops


def _category(name, opcode):
  if opcode == "convolution":
    return "convolution (XLA's own kernel)"
  if name.startswith("ynn_fusion"):
    return "YNNPACK fusion (convolutions and dots with fused neighbours)"
  if opcode in ("transpose", "copy") or "transpose" in name or name.startswith("copy"):
    return "layout transposes and copies"
  if opcode == "fft":
    return "fft"
  if opcode == "dot":
    return "dot"
  if opcode == "fusion":
    return "other fusions (elementwise, reductions, BatchNorm, pooling)"
  return "other (" + opcode + ")"


def trace_step(compiled, state, batch, steps):
  """(ms per step by op, HLO op table) for the compiled train step, from a jax.profiler trace."""
  def run():
    nonlocal state
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  return trace_ops(run, compiled.as_text(), steps)


def trace_ops(run, hlo_text, steps):
  """(ms per call by HLO op, HLO op table) of `steps` calls of run() (which runs the compiled module whose
  HLO text is `hlo_text` and blocks), from a jax.profiler trace (needs --xla_cpu_enable_xprof_traceme)."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  ops = _hlo_ops(hlo_text)
  with tempfile.TemporaryDirectory() as logdir:
    run()
    jax.profiler.start_trace(logdir)
    for _ in range(steps):
      run()
    jax.profiler.stop_trace()
    space = xplane_pb2.XSpace()
    with open(sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True))[-1], "rb") as f:
      space.ParseFromString(f.read())
  ms = collections.Counter()
  for plane in space.planes:
    for line in plane.lines:
      for event in line.events:
        name = plane.event_metadata[event.metadata_id].name
        if name in ops:  # HLO ops only (not the runtime's own scopes, which nest them)
          ms[name] += event.duration_ps / 1e9 / steps
  return ms, ops


def print_trace(ms, ops, step_s, top):
  total = sum(ms.values())
  by_cat = collections.Counter()
  for name, t in ms.items():
    by_cat[_category(name, ops[name][0])] += t
  print(f"\nTrace of the full step (per step; HLO ops sum to {total:.0f} ms of the {1e3 * step_s:.0f} ms step "
        "timed above; ops on the two cores may overlap):")
  print("\n| op category | ms | % of op time |")
  print("|---|---|---|")
  for cat, t in by_cat.most_common():
    print(f"| {cat} | {t:.1f} | {100 * t / total:.0f} |")
  print(f"\n| op (top {top}) | category | ms | HLO shape | from |")
  print("|---|---|---|---|---|")
  for name, t in ms.most_common(top):
    opcode, shape, op_name = ops[name]
    origin = op_name.replace("jit(step_fn)/", "")[-60:]
    print(f"| {name} | {_category(name, opcode).split(' (')[0]} | {t:.1f} | {shape.split('{')[0]} | {origin} |")


def conv_layers(config):
  """[(encoder, label, input shape, kernel shape, stride)] of every 2-D conv in the default encoders."""
  b = config.train.global_batch_size
  layers = []
  t = 1 + int(round(config.data.clip_seconds * config.audio.sample_rate)) // config.audio.hop_length
  f = config.audio.n_mels
  cin = 1
  for i in range(config.model.logmel.depth):
    cout = config.model.logmel.width * 2 ** i
    layers.append(("cnn14", f"block{i + 1} conv1", (b, t, f, cin), (3, 3, cin, cout), 1))
    layers.append(("cnn14", f"block{i + 1} conv2", (b, t, f, cout), (3, 3, cout, cout), 1))
    cin = cout
    if i < config.model.logmel.depth - 1:
      t, f = t // 2, f // 2
  frames = max(1, int(round(config.data.clip_seconds * config.data.fps)))
  s = config.data.frame_size
  stride, _ = tsm_resnet.stem_downsampling(s)
  w = config.model.video.width
  layers.append(("tsm", "stem 7x7", (b * frames, s, s, 3), (7, 7, 3, w), stride))
  s //= stride
  cin = w
  if not config.model.video.bottleneck:
    for i, n in enumerate(config.model.video.blocks):
      cout = w * 2 ** i
      for j in range(n):
        st = 2 if (i > 0 and j == 0) else 1
        layers.append(("tsm", f"stage{i + 1} conv1", (b * frames, s, s, cin), (3, 3, cin, cout), st))
        s //= st
        layers.append(("tsm", f"stage{i + 1} conv2", (b * frames, s, s, cout), (3, 3, cout, cout), 1))
        cin = cout
  return layers


def conv_rows(config, repeats):
  rows = []
  for enc, label, x_shape, k_shape, stride in conv_layers(config):
    x = jax.random.normal(jax.random.key(0), x_shape)
    k = jax.random.normal(jax.random.key(1), k_shape) * 0.1

    def fwd(x, k, stride=stride, impl=jax.lax.conv_general_dilated):
      return impl(x, k, (stride, stride), "SAME",
                  dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, k.shape, ("NHWC", "HWIO", "NHWC")))
    y = fwd(x, k)
    ct = jnp.ones_like(y)

    stem = label.startswith("stem")

    def fwd_bwd(x, k, ct, stem=stem, impl=jax.lax.conv_general_dilated):
      f = functools.partial(fwd, impl=impl)
      if stem:  # The stem's input is data: the step needs only the kernel's gradient.
        y, vjp = jax.vjp(lambda k: f(x, k), k)
      else:
        y, vjp = jax.vjp(f, x, k)
      return y, vjp(ct)  # y returned, so that the forward conv is not dead code
    def input_grad(x, k, ct):
      return jax.vjp(lambda x: fwd(x, k), x)[1](ct)

    def kernel_grad(x, k, ct):
      return jax.vjp(lambda k: fwd(x, k), k)[1](ct)
    f_s, f_flops, _ = measure(fwd, (x, k), repeats)
    # Each gradient alone (the forward is dead code there and XLA drops it): which of the two binds.
    i_s = float("nan") if stem else measure(input_grad, (x, k, ct), repeats)[0]
    w_s = measure(kernel_grad, (x, k, ct), repeats)[0]
    b_s, b_flops, _ = measure(fwd_bwd, (x, k, ct), repeats)
    # What the model runs: avcl.models.conv's dispatch (im2col onto tiny maps; the stem calls lax itself).
    a_s = b_s if stem else measure(functools.partial(fwd_bwd, impl=conv_lib.conv_general_dilated),
                                   (x, k, ct), repeats)[0]
    rows.append((enc, label, x_shape, k_shape, stride, f_s, f_flops, b_s, b_flops, a_s, i_s, w_s))
  return rows


def main(argv=None):
  # What avcl's entry points do on the CPU: keep freed pages mapped for XLA's buffers (avcl/host_memory.py).
  host_memory.apply(platform=jax.default_backend())
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="default", help="default (configs/default.py)")
  p.add_argument("--repeats", type=int, default=5, help="timed runs per part (median reported)")
  p.add_argument("--matmul_n", type=int, default=2048, help="size of the reference matmul")
  p.add_argument("--trace", action=argparse.BooleanOptionalAction, default=True,
                 help="profile the full step per HLO op with jax.profiler")
  p.add_argument("--top", type=int, default=15, help="most expensive ops listed from the trace")
  p.add_argument("--no-convs", action="store_true", help="skip the per-convolution table")
  args = p.parse_args(argv)
  if args.config != "default":
    raise SystemExit(f"--config: only 'default' is profiled, got {args.config!r}")
  config = default_config.get_config()
  devices = jax.devices()
  ceiling = matmul_rate("float32", args.matmul_n, repeats=5) * len(devices)
  print(f"JAX {jax.__version__} on {len(devices)} x {devices[0].device_kind}; {os.cpu_count()} CPU cores, "
        f"load average {os.getloadavg()[0]:.1f}; float32 matmul ({args.matmul_n}^3) "
        f"{ceiling / 1e9:.1f} GFLOP/s; global batch {config.train.global_batch_size}; "
        f"median of {args.repeats}")
  rows, (compiled, state, batch) = component_rows(config, args.repeats)
  step_s = rows[-1][1]
  print("\n| part | ms | % of step | GFLOP | GFLOP/s | % of matmul rate | compile s |")
  print("|---|---|---|---|---|---|---|")
  for name, sec, flops, compile_s in rows[:-1] + [("sum of parts", sum(r[1] for r in rows[:-1]),
                                                   sum(r[2] for r in rows[:-1]), float("nan"))] + rows[-1:]:
    print(f"| {name} | {1e3 * sec:.1f} | {100 * sec / step_s:.0f} | {flops / 1e9:.3f} | "
          f"{flops / sec / 1e9:.1f} | {100 * flops / sec / ceiling:.1f} | {compile_s:.1f} |")
  if args.trace:
    print_trace(*trace_step(compiled, state, batch, steps=3), step_s, args.top)
  if args.no_convs:
    return
  print("\n| encoder | conv | input | kernel | stride | fwd ms | fwd % of matmul | input grad ms | kernel grad ms "
        "| fwd+bwd ms | fwd+bwd % of matmul | avcl conv fwd+bwd ms |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  total_f = total_b = total_a = 0.0
  for (enc, label, x_shape, k_shape, stride, f_s, f_flops, b_s, b_flops, a_s, i_s,
       w_s) in conv_rows(config, args.repeats):
    total_f += f_s
    total_b += b_s
    total_a += a_s
    print(f"| {enc} | {label} | {'x'.join(map(str, x_shape))} | {'x'.join(map(str, k_shape))} | {stride} | "
          f"{1e3 * f_s:.1f} | {100 * f_flops / f_s / ceiling:.1f} | {1e3 * i_s:.1f} | {1e3 * w_s:.1f} | "
          f"{1e3 * b_s:.1f} | "
          f"{100 * b_flops / b_s / ceiling:.1f} | {1e3 * a_s:.1f} |")
  print(f"\nall convolutions (lax): forward {1e3 * total_f:.0f} ms, forward+backward {1e3 * total_b:.0f} ms "
        f"({100 * total_b / step_s:.0f}% of the full step); forward+backward as avcl runs them "
        f"{1e3 * total_a:.0f} ms")


if __name__ == "__main__":
  main()
