r"""Before renting a slice: does this config fit, how long does it compile, what does it move?

    python -m benchmarks.scale_check [--config paper] [--devices 8,64,256] [--global_batch 4096]
        [--remat off,on] [--set model.dtype=bfloat16 ...] [--hlo_stats] [--json OUT.json]

For each device count n and remat setting, a child process with n simulated CPU devices
(`--xla_force_host_platform_device_count=n`) builds the config's whole train step exactly as `avcl.train`
does (frontend, mixing, every encoder, the contrastive loss, the optimizer update, over a 1-D "data" mesh
of n devices), lowers it on abstract inputs (`jax.ShapeDtypeStruct`: nothing is allocated or run) and
compiles it. It prints, per device:
  - compile s: wall time of `lower()` + `compile()` on this machine's CPU backend;
  - memory (XLA `memory_analysis()` of the compiled step): arguments (train state and batch shard),
    outputs, temporaries, and peak = arguments + outputs + temporaries - aliased (the donated state);
  - GFLOP: XLA's `cost_analysis()` of the per-device (partitioned) program;
  - bytes per step of each collective kind, read from the optimised HLO: all-gather, all-reduce,
    reduce-scatter, collective-permute, all-to-all. A collective's bytes are its largest buffer on one
    device (all-gather: the gathered result; reduce-scatter: the input; the others: their buffer).
    Collectives in the branches of a conditional count once (one branch runs: the mixing partners'
    `lax.switch`), those in a loop body count trip-count times.
  - with --hlo_stats, what the step hands to any backend's compiler (the lowered StableHLO, before XLA's
    optimisations): instructions, convolutions and how many distinct convolution signatures (each a
    separate cuDNN autotuning job on a GPU), custom calls, loops, and the convolutions that the tiny-map
    im2col path turned into matmuls (dot_general on a rank-4 patch tensor).

What the figures are, and are not: XLA's CPU backend partitions the program exactly as a TPU or GPU one
would (the same SPMD partitioner, so the collectives and their sizes are those a pod would run), but its
buffer assignment, fusion and layouts differ from the TPU/GPU compilers', so the memory columns are a
proxy for the accelerator's. Where both were measured, docs/launch.md says by how much they differed.
The device count per child is limited by this machine's memory for compilation, not by its cores: no
simulated device allocates its share of the arrays.
"""
import argparse
import ast
import collections
import importlib
import json
import os
import re
import subprocess
import sys
import time

CONFIGS = {"paper": "configs.paper_audioset", "default": "configs.default"}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
# HBM per chip, for the "fits" columns of docs/launch.md (GiB).
HBM_GIB = {"TPU v4": 32, "TPU v5e": 16, "TPU v5p": 95, "H100": 80}

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_ARRAY_RE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")
_COMPUTATION_RE = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) \(.*\{\s*$")
_INSTRUCTION_RE = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (.+?) ([a-z][a-z0-9\-]*)\((.*)$")


# --------------------------------------------------------------------------------------------------------
# Optimised-HLO collectives.
# --------------------------------------------------------------------------------------------------------
def array_bytes(type_text: str) -> list[int]:
  """Bytes of every array in an HLO type ("f32[8,128]{1,0}" or a tuple of such)."""
  out = []
  for dtype, dims in _ARRAY_RE.findall(type_text):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    out.append(n * _DTYPE_BYTES.get(dtype, 4))
  return out


def _group_size(attrs: str) -> int:
  m = re.search(r"replica_groups=\[(\d+),(\d+)\]", attrs)  # Iota form: [groups, size]<=[...].
  if m:
    return int(m.group(2))
  m = re.search(r"replica_groups=\{\{([\d,]+)\}", attrs)
  return len(m.group(1).split(",")) if m else 1


def parse_collectives(hlo_text: str) -> dict:
  """The collectives of an optimised HLO module, each with its computation, shapes and bytes.

  Returns {"instances": [{"kind", "type", "bytes", "computation"}], "per_step": {kind: [count, bytes]}}:
  instances lists every collective in the text; per_step counts what one execution of the entry
  computation runs (conditional branches: the largest branch; while bodies: times their known trip count,
  once where XLA does not know it).
  """
  computations: dict[str, list[str]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    m = _COMPUTATION_RE.match(line)
    if m and not line.startswith(" "):
      current = m.group(1)
      computations[current] = []
      if line.startswith("ENTRY"):
        entry = current
    elif line.startswith("}"):
      current = None
    elif current is not None:
      computations[current].append(line)

  instances = []
  own: dict[str, collections.Counter] = {}
  calls: dict[str, list[tuple[str, list[str], int]]] = {}  # computation -> [(how, callees, trips)]
  for name, lines in computations.items():
    counts: collections.Counter = collections.Counter()
    children = []
    for line in lines:
      m = _INSTRUCTION_RE.match(line)
      if not m:
        continue
      _, type_text, opcode, rest = m.groups()
      base = opcode.removesuffix("-start")
      if base in COLLECTIVES and not opcode.endswith("-done"):
        sizes = array_bytes(type_text)
        if opcode.endswith("-start"):  # Async: the result tuple holds (operand, result, ...).
          nbytes = max(sizes, default=0)
        elif base == "reduce-scatter":
          nbytes = sum(sizes) * _group_size(rest)
        else:
          nbytes = sum(sizes)
        instances.append({"kind": base, "type": type_text, "bytes": nbytes, "computation": name})
        counts[base + "#"] += 1
        counts[base] += nbytes
      if opcode == "while":
        body = re.search(r"body=%?([\w.\-]+)", rest)
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', rest)
        if body:
          children.append(("while", [body.group(1)], int(trips.group(1)) if trips else 1))
      elif opcode == "conditional":
        branches = re.search(r"branch_computations=\{([^}]*)\}", rest)
        names = ([b.strip().lstrip("%") for b in branches.group(1).split(",")] if branches else
                 [x.lstrip("%") for x in re.findall(r"(?:true|false)_computation=(%?[\w.\-]+)", rest)])
        children.append(("conditional", names, 1))
      else:
        for callee in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", rest):
          children.append(("call", [callee], 1))
    own[name], calls[name] = counts, children

  memo: dict[str, collections.Counter] = {}

  def executed(name: str) -> collections.Counter:
    if name in memo:
      return memo[name]
    total = collections.Counter(own.get(name, {}))
    for how, callees, trips in calls.get(name, []):
      if how == "conditional":
        branch = max((executed(c) for c in callees),
                     key=lambda c: sum(v for k, v in c.items() if not k.endswith("#")),
                     default=collections.Counter())
        total.update(branch)
      else:
        for c in callees:
          for k, v in executed(c).items():
            total[k] += v * trips
    memo[name] = total
    return total

  step = executed(entry) if entry else collections.Counter()
  per_step = {k: [int(step.get(k + "#", 0)), int(step.get(k, 0))] for k in COLLECTIVES}
  return {"instances": instances, "per_step": per_step}


# --------------------------------------------------------------------------------------------------------
# Lowered-StableHLO statistics (what every backend's compiler receives).
# --------------------------------------------------------------------------------------------------------
def stablehlo_stats(mlir_text: str) -> dict:
  """Counts in the lowered StableHLO text: ops, convolutions (and distinct signatures), custom calls,
  while loops, and dot_generals on rank-4 operands (convolutions the tiny-map im2col path turned into
  matmuls)."""
  ops = convs = custom = loops = im2col = 0
  signatures = set()
  targets: collections.Counter = collections.Counter()
  for line in mlir_text.splitlines():
    s = line.strip()
    m = re.search(r"\b(stablehlo|mhlo|chlo)\.([a-z_]+)", s)
    if not m or "=" not in s.split(m.group(0))[0] and not s.startswith(("stablehlo", "mhlo")):
      continue
    ops += 1
    op = m.group(2)
    if op == "convolution":
      convs += 1
      # The signature: attributes and operand/result types, without SSA names.
      signatures.add(re.sub(r"%[\w#.]+", "%", s.split("=", 1)[1]))
    elif op == "custom_call":
      custom += 1
      t = re.search(r"@([\w.\-]+)", s)
      targets[t.group(1) if t else "?"] += 1
    elif op == "while":
      loops += 1
    elif op == "dot_general":
      types = re.search(r":\s*\(tensor<([\dx]+)x\w+>", s)
      if types and types.group(1).count("x") == 3:
        im2col += 1
  return {"ops": ops, "convolutions": convs, "distinct_convolutions": len(signatures),
          "custom_calls": custom, "custom_call_targets": dict(targets), "while_loops": loops,
          "im2col_matmuls": im2col}


# --------------------------------------------------------------------------------------------------------
# One (config, devices, remat) point: runs in a child with that many simulated devices.
# --------------------------------------------------------------------------------------------------------
def _override(config, item: str) -> None:
  """FIELD=VALUE (dotted field of the config; VALUE a Python literal, else a string)."""
  field, sep, text = item.partition("=")
  if not sep:
    raise SystemExit(f"--set {item!r}: expected FIELD=VALUE")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  *parents, leaf = field.split(".")
  node = config
  for part in parents:
    node = node[part]
  if leaf not in node:
    raise SystemExit(f"--set {item!r}: the config has no field {field!r}")
  node[leaf] = value


def _load_config(name: str, global_batch: int, remat: bool, overrides: list[str]):
  config = importlib.import_module(CONFIGS.get(name, name)).get_config()
  if global_batch:
    config.train.global_batch_size = global_batch
  config.model.remat = remat
  for item in overrides:
    _override(config, item)
  return config


def measure(config_name: str, devices: int, global_batch: int, remat: bool, overrides: list[str],
            hlo_stats: bool) -> dict:
  """Compiles the train step for `devices` devices and returns the figures (run in a child process)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from avcl import config_validation, sharding, train  # pylint: disable=g-import-not-at-top
  config = _load_config(config_name, global_batch, remat, overrides)
  if jax.device_count() != devices:
    raise SystemExit(f"asked for {devices} devices, JAX sees {jax.device_count()} (set XLA_FLAGS first)")
  mesh = sharding.make_mesh()
  config_validation.validate_config(config, num_devices=devices)
  t0 = time.perf_counter()
  trainer = train.make_trainer(config, mesh)
  b = config.train.global_batch_size
  n_audio = int(round(config.data.clip_seconds * config.audio.sample_rate))
  n_frames = max(1, int(round(config.data.clip_seconds * config.data.fps)))
  size = config.data.frame_size
  spec = sharding.batch_sharding(mesh)
  batch = {"audio": jax.ShapeDtypeStruct((b, n_audio), jnp.float32, sharding=spec)}
  if "frames" in train.batch_keys(config):
    batch["frames"] = jax.ShapeDtypeStruct((b, n_frames, size, size, 3), jnp.uint8, sharding=spec)
  build_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  lowered = trainer.step.lower(trainer.abstract_state, batch)
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  state_bytes = {k: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(v))
                 for k, v in trainer.abstract_state.items()}
  out = {"config": config_name, "devices": devices, "global_batch": b, "per_device_batch": b // devices,
         "remat": remat, "remat_every": config.model.remat_every, "dtype": config.model.dtype,
         "loss_impl": config.loss.impl, "mix_partner": config.augment.mix.partner, "build_s": build_s,
         "lower_s": lower_s,
         "compile_s": compile_s, "argument_bytes": mem.argument_size_in_bytes,
         "output_bytes": mem.output_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
         "alias_bytes": mem.alias_size_in_bytes,
         "peak_bytes": (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                        - mem.alias_size_in_bytes),
         "state_bytes": state_bytes, "flops": float((cost or {}).get("flops", float("nan"))),
         "collectives": parse_collectives(compiled.as_text())["per_step"]}
  if hlo_stats:
    out["hlo"] = stablehlo_stats(lowered.as_text())
  return out


def _child_env(devices: int) -> dict:
  env = dict(os.environ)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
  env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices}"])
  env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  return env


def run_point(config_name: str, devices: int, global_batch: int, remat: bool, overrides: list[str],
              hlo_stats: bool, timeout_s: float) -> dict:
  """measure() in a child process with `devices` simulated CPU devices; returns its figures or the error."""
  cmd = [sys.executable, "-m", "benchmarks.scale_check", "--_child", "--config", config_name,
         "--devices", str(devices), "--global_batch", str(global_batch), "--remat", "on" if remat else "off"]
  for item in overrides:
    cmd += ["--set", item]
  if hlo_stats:
    cmd.append("--hlo_stats")
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, env=_child_env(devices), capture_output=True, text=True, timeout=timeout_s,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  except subprocess.TimeoutExpired:
    return {"devices": devices, "remat": remat, "error": f"timed out after {timeout_s:.0f} s"}
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith("{"):
      result = json.loads(line)
      result["child_s"] = time.perf_counter() - t0
      return result
  tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
  return {"devices": devices, "remat": remat, "error": f"exit {proc.returncode}: " + " | ".join(tail)}


# --------------------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------------------
def _remat(r: dict) -> str:
  if not r["remat"]:
    return "off"
  every = r.get("remat_every", 1)
  return "on" if every == 1 else f"on, every {every}"


def _gib(x: float) -> str:
  return f"{x / 2**30:.2f}"


def _human(nbytes: float) -> str:
  for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if nbytes >= scale:
      return f"{nbytes / scale:.1f} {unit}"
  return f"{nbytes:.0f} B"


def table(rows: list[dict]) -> str:
  """The markdown table of docs/launch.md ("what fits where")."""
  head = (["devices", "batch/device", "remat", "compile s", "args GiB", "temp GiB", "peak GiB", "GFLOP"]
          + [k for k in COLLECTIVES] + [f"{k} ({v} GiB)" for k, v in HBM_GIB.items()])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['devices']} | | {'on' if r['remat'] else 'off'} | {r['error']} |")
      continue
    coll = [("-" if not r["collectives"][k][0] else
             f"{r['collectives'][k][0]} x, {_human(r['collectives'][k][1])}") for k in COLLECTIVES]
    fits = ["fits" if r["peak_bytes"] <= v * 2**30 else "no" for v in HBM_GIB.values()]
    lines.append("| " + " | ".join(
        [str(r["devices"]), str(r["per_device_batch"]), _remat(r), f"{r['compile_s']:.0f}",
         _gib(r["argument_bytes"]), _gib(r["temp_bytes"]), _gib(r["peak_bytes"]), f"{r['flops'] / 1e9:,.0f}"]
        + coll + fits) + " |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="paper", help="paper, default, or a module path with get_config()")
  p.add_argument("--devices", default="8,64,256", help="comma-separated device counts")
  p.add_argument("--global_batch", type=int, default=0, help="global batch (0: the config's own)")
  p.add_argument("--remat", default="off,on", help="comma-separated: off, on")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override, as avcl.main's --config.FIELD=VALUE (repeatable)")
  p.add_argument("--hlo_stats", action="store_true", help="also count what the lowered step holds")
  p.add_argument("--timeout", type=float, default=1800, help="seconds per point")
  p.add_argument("--json", default="", help="also write every point's figures to this file")
  p.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  remats = [{"off": False, "on": True}[r] for r in args.remat.split(",")]
  if args._child:  # pylint: disable=protected-access
    print(json.dumps(measure(args.config, int(args.devices), args.global_batch, remats[0], args.set,
                             args.hlo_stats)))
    return

  print(f"scale check of {args.config} (global batch {args.global_batch or 'as configured'}; overrides "
        f"{args.set or 'none'}) on simulated CPU devices; {os.cpu_count()} CPU cores", flush=True)
  rows = []
  for devices in (int(d) for d in args.devices.split(",")):
    for remat in remats:
      r = run_point(args.config, devices, args.global_batch, remat, args.set, args.hlo_stats, args.timeout)
      rows.append(r)
      if "error" in r:
        print(f"  {devices} devices, remat {remat}: {r['error']}", flush=True)
        continue
      state = ", ".join(f"{k} {_human(v)}" for k, v in r["state_bytes"].items() if v)
      print(f"  {devices} devices, remat {'on' if remat else 'off'}: build {r['build_s']:.1f} s, lower "
            f"{r['lower_s']:.1f} s, compile {r['compile_s']:.1f} s; peak {_gib(r['peak_bytes'])} GiB per "
            f"device (train state: {state})", flush=True)
      if "hlo" in r:
        print(f"    lowered step: {json.dumps(r['hlo'])}", flush=True)
  print()
  print(table(rows))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
