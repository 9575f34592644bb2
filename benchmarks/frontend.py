r"""Log-mel throughput: avcl's jitted frontend vs librosa vs tf.signal, same parameters.

    python -m benchmarks.frontend [--sizes 64x2,32x10] [--repeats 5] [--no-tf] [--host-malloc auto|keep|system]

avcl is timed with both choices of `config.audio.stft` ("fft": XLA's FFT; "matmul": a windowed DFT matrix).
The two "alone" rows time just the real FFT of the frames (XLA's and numpy's): a floor under any
frontend that computes it, hence a bound on the reachable speed-up over librosa.

Parameters are `configs/default.py`'s `config.audio` (16 kHz, n_fft 512, 25 ms window, 10 ms hop, 64
Slaney mels 60-7800 Hz, log(mel + 1e-6)). Each implementation turns the same float32 batch
[clips, seconds * 16 kHz] into log-mels (default sizes: the default config's training batch, 64 clips of 2 s,
and 32 clips of 10 s); throughput is seconds of audio per wall-clock second (median of
`repeats` runs after a warm-up; the implementations take turns, one call each per round, so that load from
other jobs hits them alike). tf.signal has no centre padding, no window centring in n_fft and no
Slaney filterbank, so its pipeline pads like librosa, passes a centred periodic Hann as `window_fn`
and uses librosa's filterbank: it measures TF's framing/FFT/matmul, not a different definition.
"Max |dB|" is the largest difference from librosa over every bin, in dB of the mel power
(10 log10(mel + offset)).

--host-malloc sets the process's C allocator policy first (avcl/host_memory.py; default: $AVCL_HOST_MALLOC or
"auto", which is "keep" here, what avcl's entry points use; "system" leaves the C library alone). It applies to
every implementation in the process alike, so compare policies across runs, alternating them (a policy is set
once per process).
"""
import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import librosa  # noqa: E402
import numpy as np  # noqa: E402

from avcl import frontend, host_memory  # noqa: E402
from configs.default import get_config  # noqa: E402
from data_pipeline import tf_cpu  # noqa: E402

DB_PER_NEPER = 10.0 / np.log(10.0)  # dB of power per unit of natural log.


def _audio(clips, seconds, sr):
  """Tone mixes with noise and a fade: a deterministic stand-in for speech/music levels."""
  rng = np.random.default_rng(0)
  t = np.arange(int(seconds * sr)) / sr
  out = np.empty((clips, t.size), np.float32)
  for i in range(clips):
    f = rng.uniform(80, 4000, 4)
    tone = sum(np.sin(2 * np.pi * fk * t + rng.uniform(0, 6.3)) for fk in f) / 4
    out[i] = 0.5 * tone * np.exp(-t / seconds) + 0.05 * rng.normal(size=t.size)
  return out


def _time_round_robin(fns, repeats):
  """[(median wall seconds, median process CPU seconds over all threads)] per function, after a warm-up call
  of each; every round calls each function once, in turn."""
  for fn in fns:
    fn()  # Warm-up: compilation, caches.
  wall, cpu = np.zeros((repeats, len(fns))), np.zeros((repeats, len(fns)))
  for r in range(repeats):
    for i, fn in enumerate(fns):
      start, start_cpu = time.perf_counter(), time.process_time()
      fn()
      wall[r, i] = time.perf_counter() - start
      cpu[r, i] = time.process_time() - start_cpu
  return [(float(w), float(c)) for w, c in zip(np.median(wall, 0), np.median(cpu, 0))]


def run(clips, seconds_per_clip, repeats, with_tf, host_policy):
  c = get_config().audio
  sr, n_fft, win, hop = c.sample_rate, c.n_fft, c.win_length, c.hop_length
  audio = _audio(clips, seconds_per_clip, sr)
  total_seconds = audio.shape[0] * audio.shape[1] / sr
  rows = []

  def librosa_fn():
    mel = librosa.feature.melspectrogram(y=audio, sr=sr, n_fft=n_fft, win_length=win, hop_length=hop,
                                         n_mels=c.n_mels, fmin=c.fmin, fmax=c.fmax,
                                         htk=c.mel_scale == "htk")
    return np.log(mel + c.log_offset).swapaxes(-1, -2)

  reference = librosa_fn()
  rows.append(("librosa " + librosa.__version__, librosa_fn, 0.0))

  audio_dev = jax.device_put(audio)
  for stft in frontend.STFT_IMPLS:  # config.audio.stft
    cfg = c.copy_and_resolve_references()
    cfg.stft = stft
    fn = jax.jit(frontend.from_config(cfg))
    out = np.asarray(fn(audio_dev))
    rows.append((f"avcl stft={stft}", lambda fn=fn: fn(audio_dev).block_until_ready(),
                 DB_PER_NEPER * np.abs(out - reference).max()))

  # Floors: the FFT alone on already framed, windowed, padded frames [clips, frames, n_fft], in XLA (what
  # stft="fft" calls, both cores) and in numpy (pocketfft, what librosa calls, one core). No frontend that
  # runs this FFT can take less time than it, so librosa's time over it bounds the reachable ratio.
  count = frontend.num_frames(audio.shape[1], n_fft=n_fft, hop_length=hop)
  padded = np.pad(audio, ((0, 0), (n_fft // 2, n_fft // 2)))
  index = hop * np.arange(count)[:, None] + np.arange(n_fft)[None, :]
  framed = padded[:, index] * librosa.util.pad_center(librosa.filters.get_window("hann", win), size=n_fft)
  framed = framed.astype(np.float32)
  framed_dev = jax.device_put(framed)
  xla_fft = jax.jit(lambda f: jnp.fft.rfft(f, axis=-1))
  floors = [("  XLA rfft alone", lambda: xla_fft(framed_dev).block_until_ready()),
            ("  numpy rfft alone", lambda: np.fft.rfft(framed, axis=-1))]

  if with_tf:
    tf = tf_cpu.import_tf()
    mel_fb = tf.constant(librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=c.n_mels, fmin=c.fmin,
                                             fmax=c.fmax, htk=c.mel_scale == "htk").T)
    window = librosa.util.pad_center(librosa.filters.get_window("hann", win, fftbins=True), size=n_fft)

    @tf.function
    def tf_fn(a):
      a = tf.pad(a, [[0, 0], [n_fft // 2, n_fft // 2]])
      spec = tf.signal.stft(a, frame_length=n_fft, frame_step=hop, fft_length=n_fft,
                            window_fn=lambda length, dtype: tf.constant(window, dtype))
      power = tf.math.real(spec) ** 2 + tf.math.imag(spec) ** 2
      return tf.math.log(tf.matmul(power, mel_fb) + c.log_offset)

    audio_tf = tf.constant(audio)
    out = tf_fn(audio_tf).numpy()
    rows.append((f"tf.signal {tf.__version__}", lambda: tf_fn(audio_tf).numpy(),
                 DB_PER_NEPER * np.abs(out - reference).max()))

  timings = _time_round_robin([fn for _, fn, _ in rows] + [fn for _, fn in floors], repeats)
  rows = [(name, timing, db) for (name, _, db), timing in zip(rows, timings)]
  floors = [(name, timing) for (name, _), timing in zip(floors, timings[len(rows):])]
  librosa_s, librosa_cpu = rows[0][1]
  print(f"\n{clips} clips x {seconds_per_clip:g} s at {sr} Hz ({total_seconds:g} s of audio), n_fft {n_fft}, "
        f"win {win}, hop {hop}, {c.n_mels} {c.mel_scale} mels; {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}; median of {repeats}, round robin; host allocator policy {host_policy}. "
        "'cpu s' is the process's CPU time (all threads): the fairer figure when other jobs share the cores.")
  header = (f"{'implementation':<22} {'wall s':>8} {'audio s/s':>10} {'vs librosa':>10} {'cpu s':>8} "
            f"{'vs librosa':>10} {'max |dB|':>9}")
  print(header)
  print("-" * len(header))
  for name, (seconds, cpu), db in rows:
    print(f"{name:<22} {seconds:>8.4f} {total_seconds / seconds:>10.0f} {librosa_s / seconds:>9.2f}x "
          f"{cpu:>8.4f} {librosa_cpu / cpu:>9.2f}x {db:>9.5f}", flush=True)
  for name, (seconds, cpu) in floors:
    print(f"{name:<22} {seconds:>8.4f} {total_seconds / seconds:>10.0f} {librosa_s / seconds:>9.2f}x "
          f"{cpu:>8.4f} {librosa_cpu / cpu:>9.2f}x {'':>9}", flush=True)
  print(f"(the 'alone' rows time only the {n_fft}-point real FFT of the {clips * count} frames: the most any "
        "frontend built on that FFT can reach against librosa is its 'vs librosa' figure)")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", default="64x2,32x10", help="comma-separated CLIPSxSECONDS batches")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no-tf", action="store_true", help="skip tf.signal")
  parser.add_argument("--host-malloc", choices=host_memory.POLICIES, default=None,
                      help="C allocator policy of this process (default: $AVCL_HOST_MALLOC or auto)")
  args = parser.parse_args(argv)
  host_policy = host_memory.apply(args.host_malloc, platform=jax.default_backend())
  for size in args.sizes.split(","):
    clips, seconds = size.split("x")
    run(int(clips), float(seconds), args.repeats, not args.no_tf, host_policy)


if __name__ == "__main__":
  main()
