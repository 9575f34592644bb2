r"""Embed your own audio files: `python -m avcl.embed --workdir W --input PATHS_OR_DIRS --output OUT`.

    python -m avcl.embed --workdir workdirs/default --input my_sounds/ --output my_embeddings/
    python -m avcl.embed --checkpoint workdirs/default/checkpoints/600 --input a.wav b.mp3 --output OUT
    python -m avcl.embed --saved-model exported/ --input clips/ --output gs://BUCKET/emb --timestamps

Input: files or folders (searched recursively for audio_files.AUDIO_EXTENSIONS), local or gs://. Any format, rate and
channel count that libsndfile (wav, flac, ogg, mp3, aiff, ...) or FFmpeg through PyAV (m4a, aac, opus, and
the audio track of mp4, mkv, webm, mov, ... videos) decodes; channels are averaged to mono (FFmpeg's LFE
left out), the rate converted to the model's with soxr (HQ, streamed). Files are read in blocks and cut into
windows as they arrive, so memory does not grow with a file's length; windows of consecutive files share
encoder batches.

Output, in OUT (local or gs://), each file written whole or not at all:
  scene.npy            f32[n_ok, dim]: one row per embedded file (the mean over windows of
                       `config.eval.window_seconds` every `hop_seconds` covering it), in index order
  index.csv            one row per input: path, status (ok | skipped), reason, detail, scene_row, duration_s,
                       input_sample_rate, input_channels, windows, timestamps_start, timestamps_count
                       (index.parquet instead when pyarrow is installed, or `--index-format`)
  timestamps.npy       with --timestamps: f32[rows, dim], each ok file's rows contiguous from its
                       timestamps_start: windows of `eval.timestamp_window_seconds` centred every
                       `eval.timestamp_hop_seconds` from t = 0 to the file's end
  timestamps_ms.npy    with --timestamps: f32[rows], each row's centre in ms from its file's start
  embed.json           the model, its rate, sizes and windows, and the counts of files embedded and skipped

The numbers are those of `avcl.hear` on the same audio (tests/test_embed.py): the model is
`avcl.hear.load_model(...)` (the JAX encoder through jax2tf, or the SavedModel), fed windows this module cuts
exactly as `hear` does. Skipped inputs, with their reason in the index (the run still exits 0):
missing, empty (no bytes or no samples), unreadable (no decoder opens it), no_audio (a video without an
audio track), corrupt (decoding failed), non_finite (NaN or Inf samples).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence

import numpy as np
import tqdm

from avcl import checkpoints, hear
from data_pipeline import audio_files, optional, paths

tf = hear.tf

INDEX_COLUMNS = ("path", "status", "reason", "detail", "scene_row", "duration_s", "input_sample_rate",
                 "input_channels", "windows", "timestamps_start", "timestamps_count")


# Windows ---------------------------------------------------------------------------------------------------
class Framer:
  """Cuts a stream into windows of `window` samples every `hop`, the first starting at -`left_pad` (zeros
  before the stream and after its end), without holding more than a block and a window.

  push(block) returns the windows that are complete; finish(count) those still missing up to `count`
  windows in all (zero-padded past the stream's end), as f32[k, window].
  """

  def __init__(self, window: int, hop: int, left_pad: int = 0):
    self.window, self.hop = window, hop
    self.buf = np.zeros(left_pad, np.float32)
    self.buf_start = -left_pad  # Stream position of buf[0], always the start of the next window.
    self.next = 0  # Index of the next window to emit.
    self.samples = 0  # Stream samples pushed.

  def push(self, block: np.ndarray) -> np.ndarray:
    self.samples += block.size
    self.buf = np.concatenate([self.buf, block])
    k = 0 if self.buf.size < self.window else 1 + (self.buf.size - self.window) // self.hop
    return self._take(k)

  def finish(self, count: int) -> np.ndarray:
    k = max(0, count - self.next)
    need = (k - 1) * self.hop + self.window if k else 0
    if self.buf.size < need:
      self.buf = np.concatenate([self.buf, np.zeros(need - self.buf.size, np.float32)])
    return self._take(k)

  def _take(self, k: int) -> np.ndarray:
    if k == 0:
      return np.zeros((0, self.window), np.float32)
    out = np.lib.stride_tricks.sliding_window_view(self.buf, self.window)[::self.hop][:k].copy()
    self.next += k
    self.buf = self.buf[k * self.hop:]
    self.buf_start += k * self.hop
    return out


def scene_window_count(samples: int, window: int, hop: int) -> int:
  """Windows covering a sound (avcl.hear and avcl.evaluate.embed: the last one zero-padded)."""
  return 1 + max(0, math.ceil((samples - window) / hop))


# The model -------------------------------------------------------------------------------------------------
class Encoder:
  """Per-window features through the `avcl.hear` module's own functions, so numbers equal `avcl.hear`'s.

  scene: scene_embeddings of a [b, window] batch is one window per row, so it returns each window's features.
  timestamps: a segment of (m + 2q) timestamp hops whose first sample is q hops before its first centre
  gives, in rows q .. q+m-1 of timestamp_embeddings, exactly the embeddings centred on m consecutive
  timestamps of the whole file (every window of those rows lies inside the segment, q hops covering half a
  window either side; zeros beyond the file's ends, as `hear` pads).
  """

  def __init__(self, module, *, window: int, hop: int, ts_window: int, ts_hop: int):
    self.module = module
    self.sample_rate = int(module.sample_rate)
    self.dim = int(module.scene_embedding_size)
    self.window, self.hop, self.ts_window, self.ts_hop = window, hop, ts_window, ts_hop
    left = ts_window // 2
    self.q = math.ceil(max(left, ts_window - left) / ts_hop)
    # A segment is encoded as m + 2q + 1 windows, and `hear` encodes windows in chunks of hear._CHUNK (the
    # last one zero-padded): m fills whole chunks, with at least 8q useful rows. The 2q + 1 context windows are
    # the price of streaming: 7 of 64 at tests' tiny config (q = 3), 21 of 128 at the default (q = 10).
    chunks = 1
    while chunks * hear._CHUNK - 2 * self.q - 1 < 8 * self.q:  # pylint: disable=protected-access
      chunks += 1
    self.m = chunks * hear._CHUNK - 2 * self.q - 1  # pylint: disable=protected-access
    self.segment_windows = self.m + 2 * self.q + 1
    self.segment = (self.m + 2 * self.q) * ts_hop

  def scene_windows(self, windows: np.ndarray) -> np.ndarray:
    """f32[b, window] -> f32[b, dim]."""
    return self.module.scene_embeddings(tf.constant(windows)).numpy()

  def timestamp_segments(self, segments: np.ndarray) -> np.ndarray:
    """f32[b, segment] -> f32[b, m, dim] (the rows of the segments' m central timestamps)."""
    emb, _ = self.module.timestamp_embeddings(tf.constant(segments))
    return emb.numpy()[:, self.q:self.q + self.m]


def window_sizes(module) -> tuple[int, int, int, int]:
  """(window, hop, timestamp window, timestamp hop) in samples of an avcl.hear module (live or SavedModel)."""
  if isinstance(module, hear.AvclHearModel):
    return module._window, module._hop, module._ts_window, module._ts_hop  # pylint: disable=protected-access
  meta = [int(v) for v in module._loaded._meta.numpy()]  # pylint: disable=protected-access
  return meta[2], meta[3], meta[4], meta[5]


# The run ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FileResult:
  path: str
  status: str = "ok"
  reason: str = ""
  detail: str = ""
  scene_row: int = -1
  duration_s: float = 0.0
  input_sample_rate: int = 0
  input_channels: int = 0
  windows: int = 0
  timestamps_start: int = -1
  timestamps_count: int = 0
  # Running state, not written.
  scene_sum: np.ndarray | None = None
  scene_done: int = 0
  read_done: bool = False
  ts_raw: list = dataclasses.field(default_factory=list)  # (raw row, rows) pieces in the temporary file.


class _Batcher:
  """Queues windows (and timestamp segments) of consecutive files and runs them in shared batches."""

  def __init__(self, encoder: Encoder, results: list[FileResult], batch_size: int, ts_file):
    self.enc, self.results, self.batch_size, self.ts_file = encoder, results, batch_size, ts_file
    self.scene: list[tuple[int, np.ndarray]] = []
    self.scene_n = 0
    self.ts: list[tuple[int, np.ndarray, int]] = []  # (file, segment, valid rows)
    self.ts_rows = 0
    self.ts_batch = max(1, batch_size // encoder.segment_windows)

  def add_scene(self, i: int, windows: np.ndarray) -> None:
    if windows.shape[0]:
      self.scene.append((i, windows))
      self.scene_n += windows.shape[0]
      while self.scene_n >= self.batch_size:
        self._run_scene(self.batch_size)

  def add_segments(self, i: int, segments: np.ndarray, valid: Sequence[int]) -> None:
    for s, v in zip(segments, valid):
      self.ts.append((i, s, v))
      if len(self.ts) >= self.ts_batch:
        self._run_ts()

  def flush(self) -> None:
    while self.scene_n:
      self._run_scene(min(self.scene_n, self.batch_size))
    while self.ts:
      self._run_ts()

  def _run_scene(self, n: int) -> None:
    owners, parts, taken = [], [], 0
    while taken < n:
      i, w = self.scene[0]
      k = min(n - taken, w.shape[0])
      owners.append((i, k))
      parts.append(w[:k])
      taken += k
      if k == w.shape[0]:
        self.scene.pop(0)
      else:
        self.scene[0] = (i, w[k:])
    self.scene_n -= n
    feats = self.enc.scene_windows(np.concatenate(parts)).astype(np.float64)
    row = 0
    for i, k in owners:
      r = self.results[i]
      if r.status != "ok":  # Skipped while its first windows were queued.
        row += k
        continue
      if r.scene_sum is None:
        r.scene_sum = np.zeros(self.enc.dim, np.float64)
      r.scene_sum += feats[row:row + k].sum(axis=0)
      r.scene_done += k
      row += k

  def _run_ts(self) -> None:
    batch, self.ts = self.ts[:self.ts_batch], self.ts[self.ts_batch:]
    rows = self.enc.timestamp_segments(np.stack([s for _, s, _ in batch]))
    for (i, _, valid), emb in zip(batch, rows):
      emb = np.ascontiguousarray(emb[:valid], np.float32)
      self.ts_file.write(emb.tobytes())
      self.results[i].ts_raw.append((self.ts_rows, valid))
      self.ts_rows += valid


def _npy_header(shape: tuple[int, ...]) -> bytes:
  buf = io.BytesIO()
  np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
  return buf.getvalue()


def embed_files(module, files: Sequence[str], output: str, *, timestamps: bool = False, batch_size: int = 64,
                index_format: str = "auto", progress: bool = True, model_source: str = "") -> dict:
  """Embeds `files` with an avcl.hear module and writes OUTPUT/{scene.npy, index.*, embed.json[,
  timestamps.npy, timestamps_ms.npy]}; returns embed.json's contents."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  if index_format == "auto":
    index_format = "parquet" if optional.available("pyarrow") else "csv"
  if index_format == "parquet":
    optional.require("pyarrow", "avcl.embed --index-format parquet")
  window, hop, ts_window, ts_hop = window_sizes(module)
  enc = Encoder(module, window=window, hop=hop, ts_window=ts_window, ts_hop=ts_hop)
  sr = enc.sample_rate
  results = [FileResult(path=p) for p in files]
  paths.makedirs(output)
  start = time.time()
  with tempfile.TemporaryDirectory(prefix="avcl-embed-") as tmp:
    ts_path, scene_path = os.path.join(tmp, "timestamps.f32"), os.path.join(tmp, "scene.f32")
    with open(ts_path, "wb") as ts_file, open(scene_path, "wb") as scene_file:
      batcher = _Batcher(enc, results, batch_size, ts_file)
      bar = tqdm.tqdm(total=len(files), unit="file", desc="embedding", disable=not progress)
      audio_s, skipped, next_row = 0.0, 0, [0, 0]  # next_row: (result index, scene row) to write next.

      def drain():
        """Writes the scene rows of the files whose windows are all encoded, in file order (they finish in
        order), so memory holds only the files in flight, however many there are."""
        while next_row[0] < len(results):
          r = results[next_row[0]]
          if r.status == "ok":
            if not r.read_done or r.scene_done < r.windows:
              return
            scene_file.write((r.scene_sum / r.windows).astype(np.float32).tobytes())
            r.scene_row = next_row[1]
            next_row[1] += 1
          r.scene_sum = None
          next_row[0] += 1

      for i, r in enumerate(results):
        scene = Framer(window, hop)
        ts = Framer(enc.segment, enc.m * ts_hop, left_pad=enc.q * ts_hop)
        n = 0
        try:
          for block, source in audio_files.read_audio(r.path, sr):
            r.input_sample_rate, r.input_channels = source.sample_rate, source.channels
            n += block.size
            batcher.add_scene(i, scene.push(block))
            if timestamps:
              segs = ts.push(block)
              batcher.add_segments(i, segs, [enc.m] * len(segs))
          r.windows = scene_window_count(n, window, hop)
          batcher.add_scene(i, scene.finish(r.windows))
          if timestamps:
            centres = n // ts_hop + 1
            before = ts.next
            segs = ts.finish(math.ceil(centres / enc.m))
            batcher.add_segments(i, segs, [min(enc.m, centres - (before + j) * enc.m)
                                           for j in range(len(segs))])
            r.timestamps_count = centres
          r.duration_s = round(n / sr, 6)
          r.read_done = True
          audio_s += n / sr
        except audio_files.Skip as e:
          r.status, r.reason, r.detail = "skipped", e.reason, e.detail
          skipped += 1
        bar.update(1)
        bar.set_postfix(audio_s=f"{audio_s:.0f}", skipped=skipped)
        drain()
      batcher.flush()
      drain()
      bar.close()
    ok = [r for r in results if r.status == "ok"]
    assert next_row == [len(results), len(ok)], next_row
    with open(scene_path, "rb") as raw, paths.open_write(paths.join(output, "scene.npy")) as out:
      out.write(_npy_header((len(ok), enc.dim)))
      shutil.copyfileobj(raw, out, 1 << 20)
    if timestamps:
      _write_timestamps(ok, ts_path, output, enc.dim, 1000.0 * ts_hop / sr)
  _write_index(results, output, index_format)
  counts: dict[str, int] = {}
  for r in results:
    if r.status != "ok":
      counts[r.reason] = counts.get(r.reason, 0) + 1
  info = {"model": model_source, "checkpoint_step": int(getattr(module, "checkpoint_step", 0)),
          "sample_rate": sr, "embedding_size": enc.dim,
          "window_seconds": window / sr, "hop_seconds": hop / sr,
          "timestamp_window_seconds": ts_window / sr, "timestamp_hop_seconds": ts_hop / sr,
          "timestamps": bool(timestamps), "files": len(results), "embedded": len(ok),
          "skipped": len(results) - len(ok), "skipped_by_reason": counts,
          "audio_seconds": round(sum(r.duration_s for r in ok), 3), "seconds": round(time.time() - start, 2),
          "index": f"index.{index_format}"}
  paths.write_text(paths.join(output, "embed.json"), json.dumps(info, indent=1) + "\n")
  return info


def _write_timestamps(ok: list[FileResult], raw_path: str, output: str, dim: int, hop_ms: float) -> None:
  """Copies each ok file's rows from the temporary file into timestamps.npy (streamed), in index order."""
  total = sum(r.timestamps_count for r in ok)
  row_bytes = 4 * dim
  with open(raw_path, "rb") as raw, paths.open_write(paths.join(output, "timestamps.npy")) as out:
    out.write(_npy_header((total, dim)))
    row = 0
    for r in ok:
      assert sum(k for _, k in r.ts_raw) == r.timestamps_count, r.path
      r.timestamps_start = row
      for raw_row, k in r.ts_raw:
        raw.seek(raw_row * row_bytes)
        left = k * row_bytes
        while left:
          chunk = raw.read(min(left, 1 << 20))  # 1 MiB at a time: memory stays flat.
          out.write(chunk)
          left -= len(chunk)
      row += r.timestamps_count
  ms = np.concatenate([np.arange(r.timestamps_count) * hop_ms for r in ok]).astype(np.float32) if ok \
      else np.zeros(0, np.float32)
  buf = io.BytesIO()
  np.save(buf, ms)
  paths.write_bytes(paths.join(output, "timestamps_ms.npy"), buf.getvalue())


def _write_index(results: list[FileResult], output: str, index_format: str) -> None:
  rows = [{c: getattr(r, c) for c in INDEX_COLUMNS} for r in results]
  if index_format == "parquet":
    import pyarrow as pa  # pylint: disable=g-import-not-at-top  (optional: checked by the caller)
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top  (optional: checked by the caller)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buf)
    paths.write_bytes(paths.join(output, "index.parquet"), buf.getvalue())
    return
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=INDEX_COLUMNS, lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  paths.write_text(paths.join(output, "index.csv"), text.getvalue())


def read_index(output: str) -> list[dict]:
  """The index rows of an output folder (CSV or Parquet) as dicts with typed values."""
  parquet = paths.join(output, "index.parquet")
  if paths.exists(parquet):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top  (optional)
    return pq.read_table(io.BytesIO(paths.read_bytes(parquet))).to_pylist()
  rows = list(csv.DictReader(io.StringIO(paths.read_text(paths.join(output, "index.csv")))))
  for r in rows:
    for c in ("scene_row", "input_sample_rate", "input_channels", "windows", "timestamps_start",
              "timestamps_count"):
      r[c] = int(r[c])
    r["duration_s"] = float(r["duration_s"])
  return rows


def load_module(*, workdir: str | None = None, checkpoint: str | None = None, saved_model: str | None = None):
  """The avcl.hear module of exactly one of a workdir, a checkpoint directory or an exported SavedModel."""
  given = [(f, v) for f, v in (("--workdir", workdir), ("--checkpoint", checkpoint),
                               ("--saved-model", saved_model)) if v]
  if len(given) != 1:
    raise ValueError("give exactly one of --workdir, --checkpoint, --saved-model")
  flag, path = given[0]
  if not paths.exists(path):
    raise FileNotFoundError(f"{flag} {path!r} does not exist")
  is_saved = paths.exists(paths.join(path, "saved_model.pb"))
  if flag == "--saved-model" and not is_saved:
    raise FileNotFoundError(f"--saved-model {path!r} holds no saved_model.pb (python -m avcl.export writes one)")
  if flag == "--checkpoint" and not re.fullmatch(r"\d+", os.path.basename(path.rstrip("/"))):
    raise ValueError(f"--checkpoint {path!r} is not a WORKDIR/checkpoints/<step> directory")
  if flag == "--workdir" and is_saved:
    raise ValueError(f"--workdir {path!r} is a SavedModel: pass it as --saved-model")
  return hear.load_model(path), f"{flag} {path}"


def main(argv: Sequence[str] | None = None) -> int:
  p, model = hear.command_line("python -m avcl.embed", __doc__)
  model.add_argument("--saved-model", help="a SavedModel written by python -m avcl.export")
  p.add_argument("--input", nargs="+", required=True, help="audio/video files and/or folders (recursive)")
  p.add_argument("--output", required=True, help="output folder (local or gs://)")
  p.add_argument("--timestamps", action="store_true", help="also write timestamp embeddings (hop from config)")
  p.add_argument("--batch-size", type=int, default=64,
                 help="windows per encoder call (default 64; the encoder runs them 64 at a time)")
  p.add_argument("--index-format", choices=("auto", "csv", "parquet"), default="auto",
                 help="auto: Parquet when pyarrow is installed, else CSV")
  p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --output")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  a = p.parse_args(argv)
  if a.batch_size < 1:
    p.error(f"--batch-size must be >= 1, got {a.batch_size}")
  if a.index_format == "parquet":
    optional.exit_if_missing("pyarrow", "python -m avcl.embed --index-format parquet")
  done = [n for n in ("index.csv", "index.parquet", "embed.json") if paths.exists(paths.join(a.output, n))]
  if done and not a.overwrite:
    print(f"error: --output {a.output!r} already holds {', '.join(done)} from an earlier run: pass --overwrite "
          "or another folder", file=sys.stderr)
    return 1
  try:
    files = audio_files.list_inputs(a.input, flag="--input")
    module, source = load_module(workdir=a.workdir, checkpoint=a.checkpoint, saved_model=a.saved_model)
  except (ValueError, FileNotFoundError, checkpoints.CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if done:  # --overwrite: no file of the earlier run may be left beside this run's (e.g. its timestamps).
    for n in ("index.csv", "index.parquet", "embed.json", "scene.npy", "timestamps.npy", "timestamps_ms.npy"):
      if paths.exists(paths.join(a.output, n)):
        paths.remove(paths.join(a.output, n))
  info = embed_files(module, files, a.output, timestamps=a.timestamps, batch_size=a.batch_size,
                     index_format=a.index_format, progress=not a.no_progress, model_source=source)
  print(f"embedded {info['embedded']} of {info['files']} files ({info['audio_seconds']:.1f} s of audio, "
        f"{info['embedding_size']}-d) in {info['seconds']:.1f} s; skipped {info['skipped']} "
        f"{info['skipped_by_reason']}; -> {a.output} ({info['index']})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
