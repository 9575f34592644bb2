r"""Compute estimate: encoder FLOPs per clip from XLA's cost analysis, and what the paper schedule costs.

    python -m benchmarks.compute_estimate [--batches 2,4] [--mfu 0.4] [--compile] [--json OUT]

For each encoder (log-mel CNN14, waveform Res1dNet31, video TSM-ResNet) and each setting, the encoder's
forward pass (train-mode BatchNorm, as in the training step) and its forward+backward (gradient of the
pooled features' sum with respect to the encoder's parameters) are lowered with `jax.jit(...).lower(...)`
on abstract inputs of B clips, and XLA's `cost_analysis()["flops"]` is read. FLOPs per clip = FLOPs of the
batch / B, measured at two batch sizes to check that the count is linear in the batch.

By default the cost analysis is that of the lowered (unoptimised) HLO: the full-size encoders then cost
seconds each, not minutes of compilation on a busy CPU. `--compile` reads it from the compiled executable
instead (XLA's optimised HLO for this backend; the test checks the two agree on the tiny encoders).

Settings:
  paper @ paper inputs  the encoders of configs/paper_audioset.py at its clip length, fps and frame size;
  paper @ our inputs    the same encoders at configs/default.py's clip length, fps and frame size;
  ours  @ our inputs    configs/default.py's own (tiny) encoders at its inputs (no waveform encoder there).

Total training FLOPs of the paper schedule = train.num_steps x train.global_batch_size x the sum over the
paper config's encoders of forward+backward FLOPs per clip. This counts the encoders only: the log-mel
frontend, augmentation, projection heads, contrastive loss and optimizer update are left out (they are
small next to the encoders, but the loss grows with the batch squared and is not per-clip). Accelerator
time = total / (chips x spec-sheet peak bf16 rate x MFU); the peak rates are spec-sheet values, not
measured here.
"""
import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from avcl import frontend as frontend_lib  # noqa: E402
from avcl.models import build_model  # noqa: E402
from avcl.models.model import DTYPES  # noqa: E402
from configs import default as default_config  # noqa: E402
from configs import paper_audioset  # noqa: E402

ENCODER_INPUT = {"logmel": "logmel", "wave": "wave", "video": "video"}  # encoder -> AVModel input key
# Spec-sheet peak dense bf16 rates (vendor figures, not measured here).
PEAK_BF16 = {"TPU v4 chip": 275e12, "H100 SXM": 989e12}


def _cost_flops(stage) -> float:
  cost = stage.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0]
  if not cost or "flops" not in cost:
    raise RuntimeError(f"XLA cost analysis gave no 'flops' entry: {cost!r}")
  return float(cost["flops"])


def input_spec(config, enc: str, batch: int) -> jax.ShapeDtypeStruct:
  """Abstract encoder input of `batch` clips at the config's clip length, sample rate, fps and frame size.

  logmel: f32[batch, frames, mels] (shape from the config's frontend); wave: f32[batch, samples];
  video: f32[batch, t, size, size, 3], t = round(clip_seconds * fps) as the input pipeline cuts it.
  """
  if batch < 1:
    raise ValueError(f"batch must be >= 1, got {batch}")
  samples = int(round(config.data.clip_seconds * config.audio.sample_rate))
  wave = jax.ShapeDtypeStruct((batch, samples), jnp.float32)
  if enc == "wave":
    return wave
  if enc == "logmel":
    return jax.eval_shape(frontend_lib.from_config(config.audio), wave)
  if enc == "video":
    t = max(1, int(round(config.data.clip_seconds * config.data.fps)))
    s = config.data.frame_size
    return jax.ShapeDtypeStruct((batch, t, s, s, 3), jnp.float32)
  raise ValueError(f"enc must be one of {tuple(ENCODER_INPUT)}, got {enc!r}")


def encoder_flops(model_config, data_config, enc: str, batch: int, *, compile: bool = False
                  ) -> dict[str, float]:
  """XLA FLOPs of one batch through encoder `enc` of `model_config`'s model, inputs from `data_config`.

  Returns {"forward": flops, "train": flops of forward + backward w.r.t. the encoder's parameters}.
  Only shapes are used (nnx.eval_shape, abstract inputs): nothing is initialised or run.
  """
  if not model_config.model[enc].name:
    raise ValueError(f"config.model.{enc}.name is empty: this config has no {enc} encoder")
  model = nnx.eval_shape(lambda: build_model(model_config.model, model_config.audio, rngs=nnx.Rngs(0)))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # Pure dicts of ShapeDtypeStruct: jit traces them as plain arrays, and a fresh module is merged per trace
  # (train-mode BatchNorm writes its statistics, which NNX forbids on a module from an outer trace).
  params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)
  x = input_spec(data_config, enc, batch)
  key = ENCODER_INPUT[enc]

  def features(p, r, xb):
    m = nnx.merge(graphdef, p, r, copy=True)
    return m.encode(key, xb.astype(DTYPES[model_config.model.dtype]), train=True)

  def forward(p, r, xb):
    return features(p, r, xb)

  def train(p, r, xb):
    # Only this encoder's parameters get gradients (the input is data; other encoders are not on the path).
    return jax.grad(lambda q: jnp.sum(features(q, r, xb)))(p)

  out = {}
  for name, fn in (("forward", forward), ("train", train)):
    lowered = jax.jit(fn).lower(params, rest, x)
    out[name] = _cost_flops(lowered.compile() if compile else lowered)
  return out


def per_clip(model_config, data_config, enc: str, batches: tuple[int, ...], *, compile: bool = False
             ) -> dict:
  """FLOPs per clip (forward, train) at each batch size, and the largest relative spread across batches."""
  rows = {b: encoder_flops(model_config, data_config, enc, b, compile=compile) for b in batches}
  result = {"input_shape": list(input_spec(data_config, enc, 1).shape[1:]), "batches": list(batches)}
  for kind in ("forward", "train"):
    vals = [rows[b][kind] / b for b in batches]
    result[kind] = vals[-1]
    result[f"{kind}_by_batch"] = vals
    result[f"{kind}_linearity"] = (max(vals) - min(vals)) / max(vals)
  return result


def settings():
  """(label, config whose encoders are measured, config whose inputs are used)."""
  paper, ours = paper_audioset.get_config(), default_config.get_config()
  return [("paper enc @ paper inputs", paper, paper), ("paper enc @ our inputs", paper, ours),
          ("our enc @ our inputs", ours, ours)]


def _describe(config, enc):
  m = config.model[enc]
  if enc == "video":
    return f"{m.name} w{m.width} {tuple(m.blocks)}{' bottleneck' if m.bottleneck else ''}"
  return f"{m.name} w{m.width} d{m.depth}"


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batches", default="2,4", help="two (or more) batch sizes for the per-clip count")
  p.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOP utilisation for the time estimate")
  p.add_argument("--compile", action="store_true", help="cost analysis of the compiled (not lowered) HLO")
  p.add_argument("--json", default="", help="also write the results to this JSON file")
  args = p.parse_args()
  batches = tuple(int(b) for b in args.batches.split(","))
  if len(batches) < 2 or min(batches) < 1:
    raise SystemExit(f"--batches: need at least two batch sizes >= 1, got {args.batches!r}")
  if not 0 < args.mfu <= 1:
    raise SystemExit(f"--mfu must be in (0, 1], got {args.mfu}")

  stage = "compiled" if args.compile else "lowered"
  print(f"JAX {jax.__version__}, XLA cost_analysis of the {stage} HLO on {jax.default_backend()}; "
        f"batches {batches}, per clip = FLOPs / B at B = {batches[-1]}")
  rows = []
  t0 = time.perf_counter()
  for label, mcfg, dcfg in settings():
    for enc in ENCODER_INPUT:
      if not mcfg.model[enc].name:
        continue
      r = per_clip(mcfg, dcfg, enc, batches, compile=args.compile)
      r.update(setting=label, encoder=enc, model=_describe(mcfg, enc), dtype=mcfg.model.dtype,
               clip_seconds=dcfg.data.clip_seconds, fps=dcfg.data.fps, frame_size=dcfg.data.frame_size)
      rows.append(r)
  elapsed = time.perf_counter() - t0

  header = ("setting", "encoder", "input / clip", "fwd GFLOP/clip", "fwd+bwd GFLOP/clip", "linearity %")
  print()
  print("| " + " | ".join(header) + " |")
  print("|" + "|".join("---" for _ in header) + "|")
  for r in rows:
    lin = 100 * max(r["forward_linearity"], r["train_linearity"])
    print(f"| {r['setting']} | {r['encoder']}: {r['model']} | {'x'.join(map(str, r['input_shape']))} | "
          f"{r['forward'] / 1e9:.3f} | {r['train'] / 1e9:.3f} | {lin:.2f} |")
  print(f"\n(linearity: largest relative spread of FLOPs/clip across B in {batches}; {elapsed:.0f} s in all)")

  paper = paper_audioset.get_config()
  paper_rows = [r for r in rows if r["setting"] == "paper enc @ paper inputs"]
  train_per_clip = sum(r["train"] for r in paper_rows)
  steps, gbs = paper.train.num_steps, paper.train.global_batch_size
  total = steps * gbs * train_per_clip
  print(f"\nPaper schedule (configs/paper_audioset.py): {steps:,} steps x {gbs:,} clips x "
        f"{train_per_clip / 1e9:.2f} GFLOP/clip (fwd+bwd of {', '.join(r['encoder'] for r in paper_rows)} "
        f"encoders; frontend, heads, loss, optimizer not counted) = {total:.3e} FLOP")
  print(f"Accelerator time at {100 * args.mfu:.0f}% MFU of spec-sheet peak bf16 (not measured):")
  times = {}
  for chip, peak in PEAK_BF16.items():
    chip_s = total / (peak * args.mfu)
    times[chip] = chip_s
    sizes = (32, 64, 128, 256) if "TPU" in chip else (8, 64, 256)
    per = ", ".join(f"{n} chips: {chip_s / n / 3600:.1f} h" for n in sizes)
    print(f"  {chip} ({peak / 1e12:.0f} TFLOP/s): {chip_s / 3600:,.0f} chip-hours; {per}")

  if args.json:
    with open(args.json, "w") as f:
      json.dump({"jax": jax.__version__, "stage": stage, "batches": batches, "rows": rows,
                 "paper_train_flops_per_clip": train_per_clip, "paper_total_flops": total,
                 "mfu": args.mfu, "peak_bf16_spec_sheet": PEAK_BF16, "chip_seconds": times}, f, indent=1)


if __name__ == "__main__":
  main()
