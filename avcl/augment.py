"""On-device augmentations: mixing, random gain, SpecAugment, video normalisation.

Every function is pure: `f(key, arrays, ...) -> arrays`, jit-able, written in the global view (the batch
axis may be sharded over the mesh). The one exception to "XLA inserts the collectives" is the movement of
mixing partners between devices (`partner_rows`), which is an explicit `shard_map` with one
`lax.ppermute`: left to the partitioner, a gather of partner rows becomes an all-gather of every clip's
waveform, STFT frames and video frames onto every device.

Mixing (the paper's second lever) follows what the paper states (each clip is mixed with another clip
of the batch, the primary clip dominates, the positive pair stays the primary clip's own modalities);
the exact distribution is ours and lives in `config.augment.mix`. With n devices, each holding b = B / n
contiguous rows of the global batch B:
- partner ("mix.partner"), a map i -> partner(i) that is a permutation of the batch without fixed points:
  - "global": the partner of every clip on device d is on device (d + s) mod n, for one shift s drawn
    uniformly from 1..n-1 each step (the same for all devices), at a row given by a random permutation of
    that device's b rows. Each device receives exactly one other device's shard (one collective-permute
    of b clips, whatever n), and over steps a clip meets partners from every device. With n = 1 it is
    the single-cycle derangement below over the whole batch.
  - "local": a single-cycle derangement within each device's b rows (perm a random permutation of the
    block, partner[perm[i]] = perm[i + 1]): no cross-device traffic.
  - "gathered": the single-cycle derangement over the whole global batch, whatever n: the same partners
    on every mesh, but every device then holds every clip (XLA all-gathers the waveforms, STFT frames and
    frames: memory and traffic O(B) per device). For reproducing a result across slice sizes.
- weight: the partner's weight w per sample is `max_weight * Beta(alpha, alpha)` ("beta") or
  `max_weight * Uniform(0, 1)` ("uniform"), max_weight <= 0.5 so the primary sample keeps >= 1 - w.
- mixed = (1 - w) * x + w * x[partner] for waveforms and frames; for log-mels, log-mixup-exp (BYOL-A):
  log((1 - w) * exp(x) + w * exp(x[partner])). w = 0 returns x exactly.
  Frames move between devices as stored (uint8, a quarter of float32's bytes) and are normalised after
  the move; the frontend runs on each device's own clips.

`augment_batch` order (one call per train step):
  1. random gain on the waveform (per sample, uniform in +-gain_db);
  2. mixing: waveform domain -> mix the waveform (then every audio input carries the mixture);
  3. log-mel frontend;
  4. log-mel domain -> log-mixup-exp on the log-mel (the waveform input, if used, is mixed linearly
     with the same partner and weight, so all audio inputs of a sample hold the same mixture);
  5. SpecAugment time and frequency masks on the log-mel;
  video: u8 frames of the partner moved as u8, both normalised by ImageNet mean/std, mixed with the
  same partner and weight.
  The optional second log-mel view ("logmel2", for the audio-only pair) repeats 1-5 from the clean
  waveform with an independent key (its own gain, partner, weight and masks).
"""
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from avcl import config_check, sharding

# ImageNet statistics (RGB, on [0, 1] pixels): the usual input normalisation of (TSM-)ResNets.
VIDEO_MEAN = (0.485, 0.456, 0.406)
VIDEO_STD = (0.229, 0.224, 0.225)

DISTRIBUTIONS = ("beta", "uniform")
PARTNERS = ("global", "local", "gathered")
AUDIO_DOMAINS = ("waveform", "logmel")


# ----------------------------------------------------------------------------------------------------
# Mixing.
# ----------------------------------------------------------------------------------------------------
def _derangement(key: jax.Array, blocks: int, n: int) -> jax.Array:
  """int32[blocks * n]: a single-cycle derangement within each contiguous block of n rows.

  A random permutation `perm` of the block, then partner[perm[i]] = perm[(i + 1) % n]: a single cycle,
  so no sample is its own partner when the block has more than one sample.
  """
  perm = jnp.argsort(jax.random.uniform(key, (blocks, n)), axis=-1).astype(jnp.int32)  # [blocks, n]
  nxt = jnp.roll(perm, -1, axis=-1)
  partners = jnp.zeros((blocks, n), jnp.int32)
  partners = partners.at[jnp.arange(blocks)[:, None], perm].set(nxt)
  return (partners + n * jnp.arange(blocks, dtype=jnp.int32)[:, None]).reshape(blocks * n)


def partner_plan(key: jax.Array, batch_size: int, *, partner: str = "global", num_shards: int = 1
                 ) -> tuple[jax.Array, jax.Array | None]:
  """(partner index int32[batch], device shift int32[] or None): the partner map of the module docstring.

  The shift is the s of "global" on more than one shard (partner of a clip on device d is on device
  (d + s) mod n); None where partners are not shard-shifted ("local", "gathered", one shard).
  """
  if partner not in PARTNERS:
    raise ValueError(f"partner must be one of {PARTNERS}, got {partner!r}")
  if num_shards < 1 or batch_size % num_shards:
    raise ValueError(f"batch_size={batch_size} must be a positive multiple of num_shards={num_shards}")
  if partner == "global" and num_shards > 1:
    n, b = num_shards, batch_size // num_shards
    k_shift, k_rows = jax.random.split(key)
    shift = jax.random.randint(k_shift, (), 1, n, dtype=jnp.int32)
    rows = jnp.argsort(jax.random.uniform(k_rows, (n, b)), axis=-1).astype(jnp.int32)  # [n, b]
    source = (jnp.arange(n, dtype=jnp.int32)[:, None] + shift) % n
    return (source * b + rows).reshape(batch_size), shift
  blocks = num_shards if partner == "local" else 1
  return _derangement(key, blocks, batch_size // blocks), None


def mix_partners(key: jax.Array, batch_size: int, *, partner: str = "global",
                 num_shards: int = 1) -> jax.Array:
  """Partner index of each sample: int32[batch], a permutation without fixed points (module docstring)."""
  return partner_plan(key, batch_size, partner=partner, num_shards=num_shards)[0]


def partner_rows(tree, index: jax.Array, shift: jax.Array | None, *, partner: str,
                 mesh: Mesh | None = None):
  """x[index] for every array x [batch, ...] of `tree`, moving one shard per device, never the batch.

  Args:
    tree: pytree of [batch, ...] arrays (global view; batch axis sharded over `mesh`'s data axis).
    index, shift: `partner_plan(...)` for this tree's batch and `partner` over mesh.devices.size shards.
    mesh: the train step's mesh; None (or one device): a plain global-view take.
  Returns: the same pytree with row i replaced by row index[i].

  Sharded: a shard_map in which each device takes rows of one source shard, its own ("local") or that of
  device (d + shift) mod n ("global"), received with one `lax.ppermute`. The shift is traced, so the n - 1
  possible permutations are branches of a `lax.switch`; every device takes the same branch and exactly
  one collective-permute of b rows runs. Bytes moved per device per array: b rows, whatever n.
  """
  n = 1 if mesh is None else mesh.devices.size
  if partner == "gathered" or n == 1:
    return jax.tree.map(lambda x: jnp.take(x, index, axis=0), tree)
  b = index.shape[0] // n
  axis = sharding.DATA_AXIS
  rows = index % b  # Row of the partner within its source shard.

  def receive_from(k):
    """Device d receives the shard of device (d + k) mod n."""
    perm = [(j, (j - k) % n) for j in range(n)]
    return lambda t: jax.tree.map(lambda x: lax.ppermute(x, axis, perm), t)

  def per_device(t, rows, shift):
    if partner == "global":
      t = lax.switch(shift - 1, [receive_from(k) for k in range(1, n)], t)
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), t)

  if partner == "global" and shift is None:
    raise ValueError("partner='global' over several devices needs the shift from partner_plan")
  shift = jnp.zeros((), jnp.int32) if shift is None else shift
  specs = jax.tree.map(lambda _: P(axis), tree)
  return jax.shard_map(per_device, mesh=mesh, in_specs=(specs, P(axis), P()), out_specs=specs,
                       check_vma=False)(tree, rows, shift)


def mix_weights(key: jax.Array, batch_size: int, *, distribution: str = "beta", alpha: float = 1.0,
                max_weight: float = 0.5) -> jax.Array:
  """Partner weight of each sample: f32[batch] in [0, max_weight]."""
  if distribution == "beta":
    u = jax.random.beta(key, alpha, alpha, (batch_size,))
  elif distribution == "uniform":
    u = jax.random.uniform(key, (batch_size,))
  else:
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
  return (max_weight * u).astype(jnp.float32)


def mix_pair(x: jax.Array, partner: jax.Array, weight: jax.Array, *, domain: str = "linear") -> jax.Array:
  """Mixes x[i] with partner[i] at partner weight weight[i].

  Args:
    x, partner: [batch, ...] waveforms, frames (linear) or log-mels (domain "log"), same shape.
    weight: f32[batch].
    domain: "linear": (1 - w) x + w x_p; "log": log((1 - w) e^x + w e^x_p) (log-mixup-exp).
  Returns: [batch, ...] like x; rows with w = 0 are returned unchanged (bit for bit).
  """
  w = weight.reshape((-1,) + (1,) * (x.ndim - 1)).astype(x.dtype)
  if domain == "linear":
    mixed = (1 - w) * x + w * partner
  elif domain == "log":
    # logaddexp keeps this finite for very negative log-mels; log(0) = -inf for w = 0 is harmless.
    mixed = jnp.logaddexp(jnp.log1p(-w) + x, jnp.log(w) + partner)
  else:
    raise ValueError(f"domain must be 'linear' or 'log', got {domain!r}")
  return jnp.where(w == 0, x, mixed)


def mix_with(x: jax.Array, partner_index: jax.Array, weight: jax.Array, *,
             domain: str = "linear") -> jax.Array:
  """Mixes x[i] with x[partner_index[i]] at weight[i] (global view; see `mix_pair`)."""
  return mix_pair(x, jnp.take(x, partner_index, axis=0), weight, domain=domain)


def mix(key: jax.Array, x: jax.Array, *, distribution: str = "beta", alpha: float = 1.0,
        max_weight: float = 0.5, partner: str = "global", num_shards: int = 1,
        domain: str = "linear") -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mixes each sample of x[batch, ...] with a partner; returns (mixed, partner_index, weight)."""
  k_partner, k_weight = jax.random.split(key)
  b = x.shape[0]
  index = mix_partners(k_partner, b, partner=partner, num_shards=num_shards)
  weight = mix_weights(k_weight, b, distribution=distribution, alpha=alpha, max_weight=max_weight)
  return mix_with(x, index, weight, domain=domain), index, weight


# ----------------------------------------------------------------------------------------------------
# Gain and SpecAugment.
# ----------------------------------------------------------------------------------------------------
def random_gain(key: jax.Array, audio: jax.Array, gain_db: float) -> jax.Array:
  """Scales each waveform of audio[batch, samples] by a gain uniform in [-gain_db, gain_db] dB.

  No clipping: the pipeline is float end to end and the log-mel only shifts by the gain.
  """
  if gain_db == 0:
    return audio
  db = jax.random.uniform(key, (audio.shape[0], 1), minval=-gain_db, maxval=gain_db)
  return audio * (10.0 ** (db / 20.0)).astype(audio.dtype)


def _band_mask(key: jax.Array, batch: int, length: int, count: int, max_width: int) -> jax.Array:
  """bool[batch, length]: union of `count` bands, width uniform in [0, max_width], start uniform."""
  k_width, k_start = jax.random.split(key)
  width = jax.random.randint(k_width, (batch, count, 1), 0, min(max_width, length) + 1)
  start = jnp.floor(jax.random.uniform(k_start, (batch, count, 1)) * (length - width + 1)).astype(jnp.int32)
  pos = jnp.arange(length)[None, None, :]
  return jnp.any((pos >= start) & (pos < start + width), axis=1)


def spec_augment(key: jax.Array, logmel: jax.Array, *, time_masks: int, time_mask_frames: int,
                 freq_masks: int, freq_mask_bins: int) -> jax.Array:
  """SpecAugment time and frequency masks on logmel[batch, frames, mels].

  Masked cells take each example's mean log-mel (not 0: an unnormalised log-mel's 0 is loud, its mean
  is a neutral level).
  """
  b, t, m = logmel.shape
  k_time, k_freq = jax.random.split(key)
  masked = jnp.zeros((b, t, m), bool)
  if time_masks and time_mask_frames:
    masked |= _band_mask(k_time, b, t, time_masks, time_mask_frames)[:, :, None]
  if freq_masks and freq_mask_bins:
    masked |= _band_mask(k_freq, b, m, freq_masks, freq_mask_bins)[:, None, :]
  fill = jnp.mean(logmel, axis=(1, 2), keepdims=True)
  return jnp.where(masked, fill, logmel)


# ----------------------------------------------------------------------------------------------------
# Video.
# ----------------------------------------------------------------------------------------------------
def normalize_frames(frames: jax.Array) -> jax.Array:
  """u8[b, t, h, w, 3] -> f32 (pixel / 255 - ImageNet mean) / std, same shape."""
  x = frames.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(VIDEO_MEAN, jnp.float32)) / jnp.asarray(VIDEO_STD, jnp.float32)


# ----------------------------------------------------------------------------------------------------
# The train step's entry point.
# ----------------------------------------------------------------------------------------------------
def check_config(c: config_check.Checker) -> None:
  """The `augment.*` fields (`c` on config.augment); with the whole config, freq_mask_bins <= audio.n_mels."""
  c.boolean("mix.enabled")
  c.choice("mix.partner", PARTNERS)
  c.choice("mix.distribution", DISTRIBUTIONS)
  c.real("mix.alpha", 0, lo_open=True)
  c.real("mix.max_weight", 0, 0.5, why=" (the primary sample must dominate)")
  c.choice("mix.audio_domain", AUDIO_DOMAINS)
  c.boolean("mix.video")
  c.real("gain_db", 0, 60)
  c.integer("time_masks", 0)
  c.integer("time_mask_frames", 0)
  c.integer("freq_masks", 0)
  n_mels = c.root.peek("audio.n_mels") if c.root else None
  c.integer("freq_mask_bins", 0, n_mels if config_check.is_int(n_mels) else None)


def validate_config(aug_cfg, prefix: str = "config.augment.") -> None:
  """Raises ConfigError (a ValueError) naming every field of `config.augment` that is out of range."""
  config_check.validate(check_config, aug_cfg, prefix)


def _plan(key, b, aug_cfg, num_shards):
  """(partner index int32[b], shift int32[] | None, weight f32[b]) of one view; identity when mixing is off."""
  m = aug_cfg.mix
  if not m.enabled:
    return jnp.arange(b, dtype=jnp.int32), None, jnp.zeros((b,), jnp.float32)
  k_partner, k_weight = jax.random.split(key)
  index, shift = partner_plan(k_partner, b, partner=m.partner, num_shards=num_shards)
  weight = mix_weights(k_weight, b, distribution=m.distribution, alpha=m.alpha, max_weight=m.max_weight)
  return index, shift, weight


def _audio_view(key, audio, aug_cfg, *, mesh, frontend, frames=None):
  """One augmented audio view, and the video mixed with the same partners when `frames` is given.

  Returns (logmel [b, T, M], wave [b, S], video [b, t, h, w, 3] f32 or None, partner index, weight).
  """
  m = aug_cfg.mix
  num_shards = 1 if mesh is None else mesh.devices.size
  frontend = sharding.per_shard(frontend, mesh)  # Each device computes its own clips' log-mels.
  k_gain, k_mix, k_spec = jax.random.split(key, 3)
  b = audio.shape[0]
  wave = random_gain(k_gain, audio, aug_cfg.gain_db)
  index, shift, weight = _plan(k_mix, b, aug_cfg, num_shards)
  mix_video = frames is not None and m.enabled and m.video
  # What travels to the partner's device: the gained waveform, and the frames as stored (uint8).
  moved = {"wave": wave}
  if mix_video:
    moved["frames"] = frames
  if m.enabled:
    partner = partner_rows(moved, index, shift, partner=m.partner, mesh=mesh)
    wave_mixed = mix_pair(wave, partner["wave"], weight, domain="linear")
  else:
    partner, wave_mixed = None, wave
  if m.enabled and m.audio_domain == "logmel":
    # Each device computes the log-mels of its own clips; the partners' log-mels travel (b rows).
    logmel = frontend(wave)
    logmel = mix_pair(logmel, partner_rows(logmel, index, shift, partner=m.partner, mesh=mesh), weight,
                      domain="log")
  else:
    logmel = frontend(wave_mixed)
  logmel = spec_augment(k_spec, logmel, time_masks=aug_cfg.time_masks,
                        time_mask_frames=aug_cfg.time_mask_frames, freq_masks=aug_cfg.freq_masks,
                        freq_mask_bins=aug_cfg.freq_mask_bins)
  video = None
  if frames is not None:
    video = normalize_frames(frames)
    if mix_video:
      # The normalisation is affine and the weights sum to one: mixing after it equals mixing before.
      video = mix_pair(video, normalize_frames(partner["frames"]), weight, domain="linear")
  return logmel, wave_mixed, video, index, weight


def augment_batch(key: jax.Array, batch: dict, aug_cfg, *, frontend: Callable[[jax.Array], jax.Array],
                  mesh: Mesh | None = None, second_view: bool = False) -> dict:
  """Model inputs from a raw batch (order in the module docstring).

  Args:
    key: PRNG key for this step (the same on every device: the code is global-view).
    batch: {"audio": f32[b, samples], "frames": u8[b, t, h, w, 3] (optional)}; other keys are ignored.
    aug_cfg: `config.augment`.
    frontend: audio f32[b, samples] -> log-mel f32[b, T, M] (`avcl.frontend.from_config(c.audio)`).
    mesh: the mesh whose data axis shards the batch (the partner map and its movement depend on its
      size); None: one shard.
    second_view: also return "logmel2", an independently augmented log-mel view of the same clips.

  Returns:
    {"logmel": f32[b, T, M], "wave": f32[b, samples], "video": f32[b, t, h, w, 3] (when frames given),
     "logmel2": f32[b, T, M] (when second_view), "mix_index": int32[b], "mix_weight": f32[b]}.
  """
  validate_config(aug_cfg)
  if "audio" not in batch:
    raise ValueError(f"batch needs key 'audio' (f32[b, samples]); got keys {sorted(batch)}")
  audio = batch["audio"].astype(jnp.float32)
  k_view1, k_view2 = jax.random.split(key)
  logmel, wave, video, index, weight = _audio_view(k_view1, audio, aug_cfg, mesh=mesh, frontend=frontend,
                                                   frames=batch.get("frames"))
  out = {"logmel": logmel, "wave": wave, "mix_index": index, "mix_weight": weight}
  if video is not None:
    out["video"] = video
  if second_view:
    out["logmel2"] = _audio_view(k_view2, audio, aug_cfg, mesh=mesh, frontend=frontend)[0]
  return out
