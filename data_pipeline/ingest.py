r"""Video files to sharded TFRecords in the format of `data_pipeline.schema`.

    python -m data_pipeline.ingest --input DIR_OR_CSV --output DIR [--labels CSV] [--strict] [--workers N]
        [--sample-rate 16000] [--fps 10] [--size 64] [--shard-clips 256] [--split train] [--skip-silent]
        [--max-clip-seconds 10] [--timeout-s 600]

Input: a folder (searched recursively for common video extensions) or a CSV whose rows are
`path[,start_s,end_s,labels]` (relative paths are relative to the CSV; empty start/end mean the whole file;
labels separated by ';', or by ',' inside a quoted field when no ';' is present; an optional header row starts
with `path`). `--labels` names a vocabulary CSV: rows `name` (index = row number) or `index,alias...,name`
(AudioSet's `index,mid,display_name` works: mid and display name both map to the index, the display name is
stored). Without it the vocabulary is the sorted set of labels in the input CSV. Either way it is written to
`OUTPUT/labels.csv` as `index,name` rows.

Per clip (`convert_video`, a pure function that the Beam pipeline reuses):
- Audio: every channel layout is downmixed to mono (the mean of the channels without LFE), resampled to
  `--sample-rate` with soxr (high quality), clipped to [-1, 1], float32.
- Frames: sampled at `--fps` on the clip's own clock: target frame k at `start + k / fps` shows the source
  frame on screen at that instant (the last one whose timestamp is <= it), so variable frame rate sources are
  resampled correctly. Each frame is rotated upright (display-matrix rotation), scaled so its short side is
  `--size` (area interpolation), centre-cropped to a square `--size` x `--size` (portrait and landscape alike
  lose their long-side borders, nothing is stretched), and JPEG-encoded.
- Span: the whole overlap of the audio and the video streams (or `start_s`..`end_s` within it); the first
  frame and the first audio sample are at the same instant (see schema.py's alignment contract). Frames
  repeated over a timestamp gap stop at the audio's end, so a crafted gap cannot hold a worker.
- Long spans: cut into consecutive clips of at most `--max-clip-seconds` (default 10 s, AudioSet's length),
  cut at frame instants, each its own record with its own start time (`split_clip`); a tail under 1 ms is
  dropped. A span past the end of an intact file (the video is shorter than the CSV says) gives a clip that
  ends where the file does, listed under `cut_short` in the manifest.
- Silent audio (peak below -60 dBFS) is valid input: it is written and counted as `silent` in the manifest
  (with its path), or skipped with reason `silent` under `--skip-silent`.

Bad input never stops the run: each input is skipped with one of the reasons `unreadable` (missing or
unreadable path), `corrupt` (not a decodable media file, or decoding failed), `truncated` (decoding stops well
before the declared duration, or before the requested end where that comes first), `no_audio`, `no_video`,
`unsupported_codec` (no decoder for a stream), `zero_duration` (an empty file, or nothing inside the
requested span), `bad_range` (end before start, a negative, NaN or infinite time), `non_finite` (NaN or Inf
audio samples), `oversize` (a clip's record would exceed MAX_RECORD_BYTES), `crash` (the decoder process
died), `timeout` (the input took longer than `--timeout-s`, default 600 s; its process is killed), `silent`
(under --skip-silent); logged with path and reason and listed in `manifest.json`. Every input is converted
in a worker process (`WorkerPool`), also with `--workers 1`, so a decoder that crashes or hangs costs that
input only. `--strict` turns the first skip into an error.

Resume: inputs are assigned to shards in a fixed order; a shard is written to a temporary name and renamed,
then a small record of its clips and skips is renamed into `OUTPUT/.ingest/`. Re-running the same command
keeps every finished shard and converts only the rest; a different input list or options in the same output
folder is an error.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from multiprocessing import connection as mp_connection

import numpy as np
from tqdm import tqdm

from data_pipeline import schema

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".flv", ".wmv",
                    ".3gp", ".ts", ".mts", ".ogv")
SKIP_REASONS = ("unreadable", "corrupt", "truncated", "no_audio", "no_video", "unsupported_codec",
                "zero_duration", "bad_range", "silent", "non_finite", "crash", "timeout", "oversize")
SILENCE_DBFS = -60.0  # Peak level below which a clip counts as silent.
STATE_DIR = ".ingest"
# Per input (a whole file, every clip cut from it). A 10 s clip converts in well under a second and an hour
# of video in about a minute on one core; ten minutes leaves room for slow disks and long files while a hung
# decoder costs one worker ten minutes, not the run.
DEFAULT_TIMEOUT_S = 600.0
# A record above this is skipped (`oversize`): 10 s at the defaults is about 0.7 MB, and tf.data, protobuf
# (2 GiB hard limit) and the shuffle buffer all suffer long before it. Only extreme --size/--fps/
# --max-clip-seconds reach it.
MAX_RECORD_BYTES = 256 << 20
# Decoding may stop this much (or 10% of the span, if more) before the declared or requested end without
# the input counting as truncated (encoder padding, rounded container durations).
TRUNCATION_SLACK_S = 0.5
# An input whose records exceed this waits for the rest of its shard on disk (OUTPUT/.ingest/spool/), not in
# memory: a shard of 256 hour-long videos would otherwise hold about 60 GB in the parent. Ten-second clips
# (about 0.7 MB) stay in memory.
SPOOL_BYTES = 2 << 20

log = logging.getLogger("data_pipeline.ingest")


@dataclasses.dataclass(frozen=True)
class Options:
  """What a stored clip looks like (also the resume fingerprint)."""
  sample_rate: int = 16000  # Hz of the stored mono audio.
  fps: float = 10.0  # Stored frames per second.
  size: int = 64  # Stored frames are size x size px.
  jpeg_quality: int = 90  # JPEG quality of stored frames.
  skip_silent: bool = False  # Skip silent clips instead of writing them.
  max_clip_seconds: float = 10.0  # Longer spans are cut into clips of at most this length (AudioSet's 10 s).

  def validate(self):
    checks = [("sample_rate", self.sample_rate, 1000, 192000), ("fps", self.fps, 0.1, 120.0),
              ("size", self.size, 8, 1024), ("jpeg_quality", self.jpeg_quality, 1, 100),
              ("max_clip_seconds", self.max_clip_seconds, 0.1, 86400.0)]
    for name, value, lo, hi in checks:
      if not lo <= value <= hi:
        raise ValueError(f"Option {name}={value} is out of range [{lo}, {hi}].")
    return self


@dataclasses.dataclass(frozen=True)
class Job:
  """One input: a file and an optional span and labels."""
  path: str
  video_id: str
  start_s: float | None = None
  end_s: float | None = None
  labels: tuple[str, ...] = ()
  label_index: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Skip:
  """An input that produced no clip, and why (reason is one of SKIP_REASONS)."""
  path: str
  reason: str
  detail: str = ""

  def as_dict(self):
    return dataclasses.asdict(self)


class IngestError(RuntimeError):
  """Raised under --strict for the first skipped input, and for unusable arguments."""


# ----------------------------------------------------------------------------------------------------------
# One video -> one Clip.

def _open(path: str):
  import av  # pylint: disable=g-import-not-at-top  (deferred: the decode stack loads FFmpeg; only decoder processes need it)
  if not os.path.isfile(path) or not os.access(path, os.R_OK):
    return None, Skip(path, "unreadable", "no such file" if not os.path.exists(path) else
                      "not a readable regular file")
  if os.path.getsize(path) == 0:  # Typically a failed download or copy.
    return None, Skip(path, "zero_duration", "empty file (0 bytes)")
  try:
    return av.open(path), None
  except (PermissionError, IsADirectoryError, FileNotFoundError) as e:
    return None, Skip(path, "unreadable", str(e))
  except av.FFmpegError as e:
    return None, Skip(path, "corrupt", f"cannot open as media: {e}")


def _seek(container, seconds: float) -> None:
  """Seeks to the keyframe at or before `seconds`, only to save decoding: where seeking fails (streams
  without an index) decoding simply starts at the beginning, and frames before the span are dropped."""
  import av  # pylint: disable=g-import-not-at-top  (deferred: the decode stack loads FFmpeg; only decoder processes need it)
  try:
    container.seek(int(seconds * 1e6), backward=True, any_frame=False)
  except av.FFmpegError:
    pass


def downmix(frame) -> np.ndarray:
  """Planar float AudioFrame -> f32[samples]: the mean of its channels, the LFE channel left out.

  A plain mean cannot clip (unlike FFmpeg's default -3 dB matrix, which sums stereo to 1.41x).
  """
  x = frame.to_ndarray().reshape(len(frame.layout.channels), -1)
  keep = [i for i, c in enumerate(frame.layout.channels) if c.name != "LFE"] or list(range(x.shape[0]))
  return x[keep].mean(axis=0).astype(np.float32)


def _decode_audio(container, stream, start_s, end_s, sample_rate):
  """All audio in [start_s, end_s] as mono f32 at `sample_rate` (not clipped), and the time (s) of its first
  sample."""
  import av  # pylint: disable=g-import-not-at-top  (deferred: the decode stack loads FFmpeg; only decoder processes need it)
  import soxr  # pylint: disable=g-import-not-at-top  (deferred with PyAV: the decoder processes' resampler)
  resampler = stream_resampler = None
  chunks, t0 = [], None
  if start_s:
    _seek(container, start_s)
  for frame in container.decode(stream):
    if frame.time is not None and end_s is not None and frame.time > end_s:
      break
    if resampler is None:
      src_rate = frame.sample_rate
      # The stream's first rate is kept throughout (swresample follows any mid-stream change);
      # swresample converts any sample format to planar float, keeping the channels; we downmix ourselves.
      resampler = av.AudioResampler(format="fltp", rate=src_rate)
      stream_resampler = soxr.ResampleStream(src_rate, sample_rate, 1, dtype="float32", quality="HQ")
    if t0 is None:
      t0 = frame.time if frame.time is not None else 0.0
    for out in resampler.resample(frame):
      chunks.append(stream_resampler.resample_chunk(downmix(out)))
  if resampler is None:
    return np.zeros([0], np.float32), 0.0
  for out in resampler.resample(None):
    chunks.append(stream_resampler.resample_chunk(downmix(out)))
  chunks.append(stream_resampler.resample_chunk(np.zeros([0], np.float32), last=True))
  # Not clipped here: clipping turns Inf into +-1 and keeps NaN, and both must be caught (convert_video).
  return np.concatenate(chunks).astype(np.float32), t0


def _frame_to_jpeg(frame, size, quality):
  """VideoFrame -> JPEG bytes of the upright, short-side-scaled, centre-cropped size x size image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top  (deferred: the decode stack loads FFmpeg; only decoder processes need it)
  rotation = (getattr(frame, "rotation", 0) or 0) % 360
  w, h = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
  scale = size / min(w, h)
  sw, sh = max(size, round(w * scale)), max(size, round(h * scale))
  if rotation in (90, 270):
    sw, sh = sh, sw
  img = frame.reformat(width=sw, height=sh, format="rgb24", interpolation="AREA").to_ndarray()
  if rotation:
    # Display matrix rotation is counter-clockwise in degrees.
    img = np.rot90(img, k=rotation // 90)
  h2, w2 = img.shape[:2]
  y, x = (h2 - size) // 2, (w2 - size) // 2
  img = np.ascontiguousarray(img[y:y + size, x:x + size])
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def _decode_frames(container, stream, seek_s, min_start, end_s, fps, size, quality, emit_end=math.inf):
  """Frames at `clip_start + k / fps`, k = 0, 1, ..., as JPEGs, none at or after `end_s` or `emit_end`.

  `clip_start` = max(min_start, time of the first decoded frame). Returns (jpegs, clip_start, video_end)
  where video_end is when the last frame stops being shown; ([], None, None) when no frame decodes.
  `emit_end` (the audio's end: nothing after it can be in the clip) bounds the frames repeated over a
  timestamp gap, so a crafted gap of years costs nothing; decoding still goes on to `end_s` (or the end),
  which `video_end` and the truncation check need.
  """
  if seek_s:
    _seek(container, seek_s)
  default_dur = 1.0 / float(stream.average_rate) if stream.average_rate else 1.0 / 25
  jpegs: list[bytes] = []
  limit = min(math.inf if end_s is None else end_s, emit_end)
  prev = prev_jpeg = prev_time = clip_start = None
  last_dur = default_dur
  k = 0

  def emit_until(t_limit):
    # Every target time before `t_limit` shows `prev`: the frame on screen until the next one arrives.
    nonlocal k, prev_jpeg
    while clip_start + k / fps < t_limit - 1e-9:
      if prev_jpeg is None:
        prev_jpeg = _frame_to_jpeg(prev, size, quality)
      jpegs.append(prev_jpeg)
      k += 1

  for frame in container.decode(stream):
    t = frame.time
    if t is None:  # No timestamp: assume the previous frame's duration.
      t = prev_time + last_dur if prev_time is not None else 0.0
    if prev is None:
      clip_start = max(min_start, t)
    else:
      if t > prev_time:
        last_dur = t - prev_time
      emit_until(min(t, limit))
    if end_s is not None and t >= end_s:
      break
    prev, prev_jpeg, prev_time = frame, None, t
  if prev is None:
    return [], None, None
  own = float(prev.duration * prev.time_base) if prev.duration and prev.time_base else 0.0
  video_end = prev_time + (own if own > 0 else last_dur)
  emit_until(min(video_end, limit))
  return jpegs, clip_start, video_end


def is_silent(audio: np.ndarray) -> bool:
  return audio.size == 0 or float(np.max(np.abs(audio))) < 10 ** (SILENCE_DBFS / 20)


def convert_video(path: str, start_s: float | None, end_s: float | None, labels: Sequence[int],
                  options: Options, *, video_id: str | None = None,
                  label_strings: Sequence[str] = ()) -> schema.Clip | Skip:
  """Decodes one video (or its span [start_s, end_s]) into a Clip, or says why it cannot (a Skip).

  Pure apart from reading `path`: no global state, safe in any worker process (and in Apache Beam).
  `labels`: label indices; `label_strings`: their names (parallel).
  """
  import av  # pylint: disable=g-import-not-at-top  (deferred: the decode stack loads FFmpeg; only decoder processes need it)
  video_id = video_id or path
  for name, value in (("start", start_s), ("end", end_s)):
    if value is not None and not math.isfinite(value):
      return Skip(path, "bad_range", f"{name} time {value} is not a finite number of seconds")
  if start_s is not None and end_s is not None and end_s < start_s:
    return Skip(path, "bad_range", f"end {end_s} s is before start {start_s} s")
  if (start_s is not None and start_s < 0) or (end_s is not None and end_s < 0):
    return Skip(path, "bad_range", f"negative time in span {start_s}..{end_s}")
  container, skip = _open(path)
  if skip:
    return skip
  try:
    with container:
      # Cover art (an "attached picture") is a still image, not video.
      videos = [v for v in container.streams.video
                if not v.disposition & av.stream.Disposition.attached_pic]
      if not videos:
        return Skip(path, "no_video", "no video stream" + (" (only cover art)" if container.streams.video
                                                            else ""))
      if not container.streams.audio:
        return Skip(path, "no_audio", "no audio stream")
      vstream, astream = videos[0], container.streams.audio[0]
      for s in (vstream, astream):
        if s.codec_context is None:
          return Skip(path, "unsupported_codec", f"no decoder for the {s.type} stream (#{s.index})")
      audio, audio_t0 = _decode_audio(container, astream, start_s, end_s, options.sample_rate)
      if audio.size == 0:
        return Skip(path, "zero_duration", "no audio samples in the requested span")
      audio_end = audio_t0 + audio.size / options.sample_rate
      min_start = audio_t0 if start_s is None else max(start_s, audio_t0)
      # A second demuxer for the video pass: no rewinding of the first (which some inputs cannot do).
      with av.open(path) as vcontainer:
        vs = vcontainer.streams[vstream.index]
        vs.thread_type = "AUTO"
        jpegs, clip_start, video_end = _decode_frames(vcontainer, vs, start_s, min_start, end_s,
                                                      options.fps, options.size, options.jpeg_quality,
                                                      emit_end=audio_end)
      if clip_start is None:
        return Skip(path, "zero_duration", "no video frames in the requested span")
      clip_end = min(audio_end, video_end, end_s if end_s is not None else math.inf)
      duration = clip_end - clip_start
      if duration <= 1e-6 or not jpegs:
        return Skip(path, "zero_duration", f"audio and video overlap for {max(duration, 0):.3f} s in the "
                    "requested span")
      declared = container.duration / 1e6 if container.duration else None
      if declared is not None:
        # Decoding must reach the declared end, or the requested end where that comes first: a file cut
        # short (a failed download) is `truncated` whether or not the CSV gives a span. A span past the
        # declared end (the video is shorter than the list says) is not damage: the clip ends where the
        # file does, and convert_job counts it as `cut_short`.
        expected_end = declared if end_s is None else min(declared, end_s)
        decoded_end = max(audio_end, video_end)
        if decoded_end < expected_end - max(TRUNCATION_SLACK_S, 0.1 * (expected_end - (start_s or 0.0))):
          return Skip(path, "truncated", f"decoding stops at {decoded_end:.2f} s of a declared "
                      f"{declared:.2f} s" + ("" if end_s is None else f" (span ends at {end_s:.2f} s)"))
  except av.error.DecoderNotFoundError as e:
    return Skip(path, "unsupported_codec", str(e))
  except (av.FFmpegError, ValueError, RuntimeError, EOFError) as e:
    return Skip(path, "corrupt", f"decoding failed: {type(e).__name__}: {e}")

  n_frames = max(1, math.ceil(duration * options.fps - 1e-6))
  n_samples = int(round(duration * options.sample_rate))
  first = int(round((clip_start - audio_t0) * options.sample_rate))
  audio = audio[first:first + n_samples]
  if audio.size < n_samples:  # Rounding can leave the last sample or two short.
    audio = np.pad(audio, [0, n_samples - audio.size])
  bad = ~np.isfinite(audio)
  if bad.any():
    # Float sources (pcm_f32le, a broken encoder) can hold NaN/Inf; a clip with them would poison a training
    # batch, and schema.serialize refuses them.
    return Skip(path, "non_finite", f"{int(bad.sum())} of {audio.size} audio samples are NaN or Inf (first at "
                f"{clip_start + np.argmax(bad) / options.sample_rate:.3f} s)")
  audio = np.clip(audio, -1.0, 1.0)
  if options.skip_silent and is_silent(audio):
    return Skip(path, "silent", f"peak below {SILENCE_DBFS:g} dBFS")
  return schema.Clip(
      video_id=video_id, audio=audio, sample_rate=options.sample_rate, frames=jpegs[:n_frames],
      fps=float(options.fps), start_us=int(round(clip_start * 1e6)), end_us=int(round(clip_end * 1e6)),
      label_index=[int(i) for i in labels], label_string=list(label_strings))


# ----------------------------------------------------------------------------------------------------------
# Inputs and vocabulary.

def read_vocabulary(path: str) -> tuple[dict[str, int], list[str]]:
  """Label vocabulary CSV -> ({name or alias: index}, names by index).

  Rows `name` (index = row number) or `index,alias...,name` (the last column is the name that is stored,
  every column maps to the index), with an optional header row.
  """
  vocab: dict[str, int] = {}
  canonical: dict[int, str] = {}
  with open(path, newline="", encoding="utf-8") as f:
    for row_number, row in enumerate(csv.reader(f)):
      row = [c.strip() for c in row if c.strip()]
      if not row:
        continue
      if row_number == 0 and row[0].lower() in ("index", "name", "label", "display_name"):
        continue
      if len(row) > 1 and row[0].lstrip("-").isdigit():
        index, names = int(row[0]), row[1:]
      else:
        index, names = len(set(vocab.values())), row[:1]
      for name in names:
        if name in vocab and vocab[name] != index:
          raise ValueError(f"{path}: label {name!r} has two indices ({vocab[name]} and {index}).")
        vocab[name] = index
      canonical[index] = names[-1]
  if not vocab:
    raise ValueError(f"{path}: empty label vocabulary.")
  if min(canonical) < 0:
    raise ValueError(f"{path}: negative label index {min(canonical)}.")
  return vocab, [canonical.get(i, "") for i in range(max(canonical) + 1)]


def _split_labels(field: str) -> list[str]:
  sep = ";" if ";" in field else ","
  return [s.strip() for s in field.split(sep) if s.strip()]


def _float_or_none(value: str, what: str, where: str) -> float | None:
  value = value.strip()
  if not value:
    return None
  try:
    return float(value)
  except ValueError:
    raise ValueError(f"{where}: {what} {value!r} is not a number of seconds.") from None


def read_inputs(input_path: str, labels_csv: str | None = None) -> tuple[list[Job], list[str]]:
  """Folder or CSV -> (jobs in a fixed order, vocabulary names by index)."""
  if os.path.isdir(input_path):
    paths = []
    for root, dirs, files in os.walk(input_path):
      dirs.sort()
      paths += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(VIDEO_EXTENSIONS)]
    if not paths:
      raise IngestError(f"No video files ({', '.join(VIDEO_EXTENSIONS)}) under {input_path!r}.")
    # Absolute paths: the resume fingerprint must not depend on the working directory.
    jobs = [Job(path=os.path.abspath(p), video_id=os.path.relpath(p, input_path)) for p in paths]
    rows_labels = [[] for _ in jobs]
  elif os.path.isfile(input_path):
    if input_path.lower().endswith(VIDEO_EXTENSIONS):
      raise IngestError(f"--input {input_path!r} is a video file; give its folder or a CSV that lists it.")
    base = os.path.dirname(os.path.abspath(input_path))
    jobs, rows_labels = [], []
    with open(input_path, newline="", encoding="utf-8") as f:
      try:
        rows = list(csv.reader(f))
      except (UnicodeDecodeError, csv.Error) as e:
        raise IngestError(f"--input {input_path!r} is not a UTF-8 CSV file ({e}).") from None
      for line, row in enumerate(rows, start=1):
        if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
          continue
        if line == 1 and row[0].strip().lower() == "path":
          continue
        where = f"{input_path}:{line}"
        if len(row) > 4:
          raise IngestError(f"{where}: expected path[,start_s,end_s,labels], got {len(row)} fields "
                            "(quote a labels field that holds commas).")
        rel = row[0].strip()
        start = _float_or_none(row[1], "start_s", where) if len(row) > 1 else None
        end = _float_or_none(row[2], "end_s", where) if len(row) > 2 else None
        jobs.append(Job(path=rel if os.path.isabs(rel) else os.path.join(base, rel), video_id=rel,
                        start_s=start, end_s=end))
        rows_labels.append(_split_labels(row[3]) if len(row) > 3 else [])
    if not jobs:
      raise IngestError(f"{input_path}: no rows.")
  else:
    raise IngestError(f"--input {input_path!r} is neither a folder nor a CSV file.")

  if labels_csv:
    vocab, vocabulary = read_vocabulary(labels_csv)
  else:
    vocabulary = sorted({l for ls in rows_labels for l in ls})
    vocab = {name: i for i, name in enumerate(vocabulary)}
  out = []
  for job, names in zip(jobs, rows_labels):
    unknown = [n for n in names if n not in vocab]
    if unknown:
      raise IngestError(f"{input_path}: labels {unknown} of {job.video_id!r} are not in the vocabulary "
                        f"{labels_csv!r}.")
    index = tuple(vocab[n] for n in names)
    out.append(dataclasses.replace(job, labels=tuple(vocabulary[i] for i in index), label_index=index))
  return out, vocabulary


# ----------------------------------------------------------------------------------------------------------
# Shards, per-shard state and the manifest (reused by the Beam pipeline).

def split_clip(clip: schema.Clip, max_seconds: float) -> list[schema.Clip]:
  """Cuts a clip longer than `max_seconds` into consecutive clips of at most that length.

  Every cut is at a frame instant (a whole number of frames per clip, `floor(max_seconds * fps)`), so each
  piece keeps the alignment contract: its first frame and first sample are at its own `start_us`. Frames
  and samples are taken, not re-decoded: piece i holds frames [i * n, i * n + its count) and samples from
  `round(i * n / fps * sample_rate)`. A tail under 1 ms is dropped (at most one repeated frame).
  """
  duration = clip.duration_s
  if duration <= max_seconds + 1e-6:
    return [clip]
  per = max(1, math.floor(max_seconds * clip.fps + 1e-6))
  step = per / clip.fps
  pieces = []
  for i in range(math.ceil((duration - 1e-3) / step)):
    start_us = clip.start_us + int(round(i * step * 1e6))
    end_us = min(clip.start_us + int(round((i + 1) * step * 1e6)), clip.end_us)
    seconds = (end_us - start_us) / 1e6
    n_frames = max(1, math.ceil(seconds * clip.fps - 1e-6))
    first = int(round(i * step * clip.sample_rate))
    n_samples = int(round(seconds * clip.sample_rate))
    audio = clip.audio[first:first + n_samples]
    if audio.size < n_samples:  # Rounding at the very end.
      audio = np.pad(audio, [0, n_samples - audio.size])
    pieces.append(dataclasses.replace(clip, audio=audio, frames=clip.frames[i * per:i * per + n_frames],
                                      start_us=start_us, end_us=end_us))
  return pieces


def _record_bytes(clip: schema.Clip) -> int:
  """The serialized size of `clip`, closely enough for the oversize guard, without serialising it."""
  return 4 * clip.audio.size + sum(len(f) + 8 for f in clip.frames) + 1024


def convert_job(job: Job, options: Options) -> dict:
  """Worker entry: one Job -> a picklable result, its serialized records or its skip.

  Result keys: `path`, `seconds` (conversion time), and either `skip` (a Skip as a dict) or `records`
  (serialized clips in time order, the span cut by `split_clip`), `clips` (how many), `duration_s` (their
  total), `silent_clips` (how many are silent), `silent_dropped` (silent clips left out under --skip-silent)
  and `cut_short` (a reason string when the span ran past the end of the file, else None).
  """
  t = time.perf_counter()
  out = {"path": job.path}
  try:
    result = convert_video(job.path, job.start_s, job.end_s, job.label_index, options, video_id=job.video_id,
                           label_strings=job.labels)
    if not isinstance(result, Skip):
      pieces = split_clip(result, options.max_clip_seconds)
      silent = [is_silent(c.audio) for c in pieces]
      if options.skip_silent:  # The whole span was not silent (convert_video), some pieces may be.
        pieces = [c for c, quiet in zip(pieces, silent) if not quiet]
      size = max(_record_bytes(c) for c in pieces)
      if size > MAX_RECORD_BYTES:
        result = Skip(job.path, "oversize", f"a {pieces[0].duration_s:.1f} s clip would make a "
                      f"{size / 2**20:.0f} MiB record (limit {MAX_RECORD_BYTES / 2**20:.0f} MiB); lower "
                      "--max-clip-seconds, --size or --fps")
      else:
        cut_short = None
        if job.end_s is not None and job.end_s - result.end_us / 1e6 > TRUNCATION_SLACK_S:
          cut_short = f"span ends at {job.end_s:.2f} s, the file at {result.end_us / 1e6:.2f} s"
        # Serialising is inside the try: a record that schema refuses is one bad input, not a stopped run.
        records = [schema.serialize(c) for c in pieces]
        out.update(records=records, clips=len(records), duration_s=sum(c.duration_s for c in pieces),
                   silent_clips=0 if options.skip_silent else sum(silent),
                   silent_dropped=len(silent) - len(pieces), cut_short=cut_short)
  except Exception as e:  # pylint: disable=broad-except
    # Anything unforeseen in a decoder is still one bad input, not a crashed run.
    result = Skip(job.path, "corrupt", f"{type(e).__name__}: {e}")
  if isinstance(result, Skip):
    out = {"path": job.path, "skip": result.as_dict()}
  out["seconds"] = time.perf_counter() - t
  return out


def shard_records(results: Iterable[dict]) -> Iterator[bytes]:
  """The records of one shard's `convert_job` results, given in input order (spooled ones read back)."""
  for r in results:
    if "spool" in r:
      yield from _read_spool(r["spool"])
    else:
      yield from r.get("records", ())


def _spool(path: str, records: Sequence[bytes]) -> None:
  """Records -> a file of (u64 little-endian length, bytes) frames; read back by `_read_spool`."""
  with open(path, "wb") as f:
    for r in records:
      f.write(struct.pack("<Q", len(r)))
      f.write(r)


def _read_spool(path: str) -> Iterator[bytes]:
  with open(path, "rb") as f:
    while header := f.read(8):
      (n,) = struct.unpack("<Q", header)
      yield f.read(n)


def shard_summary(results: Iterable[dict]) -> dict:
  """Per-shard bookkeeping from `convert_job` results (records excluded)."""
  s = {"clips": 0, "duration_s": 0.0, "silent": [], "silent_clips": 0, "silent_dropped": 0, "cut_short": [],
       "skipped": []}
  for r in results:
    if "skip" in r:
      s["skipped"].append(r["skip"])
      continue
    s["clips"] += r["clips"]
    s["duration_s"] += r["duration_s"]
    s["silent_clips"] += r["silent_clips"]
    s["silent_dropped"] += r["silent_dropped"]
    if r["silent_clips"]:
      s["silent"].append(r["path"])
    if r["cut_short"]:
      s["cut_short"].append({"path": r["path"], "detail": r["cut_short"]})
  return s


def _write_atomic(path: str, text: str) -> None:
  """Writes `text` to a temporary name, fsyncs it and renames it to `path` (schema.replace_durably)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8", newline="") as f:
    f.write(text)
  schema.replace_durably(tmp, path)


def _write_json_atomic(path: str, obj) -> None:
  _write_atomic(path, json.dumps(obj, indent=1))


def check_split(split: str) -> str:
  """`split` if it is a plain name; it becomes part of file names inside the output folder, so a path
  separator or `..` (`--split ../x`) would write elsewhere."""
  if not split or split in (".", "..") or "/" in split or "\\" in split or ".." in split or \
      split != split.strip() or split.startswith("."):
    raise IngestError(f"--split {split!r} is not a plain name (no path separator, '..', leading dot or "
                      "surrounding spaces): it names files inside the output folder.")
  return split


def build_manifest(summaries: Sequence[dict], *, num_inputs: int, options: Options, split: str,
                   shards: Sequence[str], vocabulary: Sequence[str], elapsed_s: float | None = None) -> dict:
  skipped = [s for summary in summaries for s in summary["skipped"]]
  counts = {reason: 0 for reason in SKIP_REASONS}
  for s in skipped:
    counts[s["reason"]] += 1
  silent = [p for summary in summaries for p in summary["silent"]]
  cut_short = [c for summary in summaries for c in summary.get("cut_short", [])]
  return {
      "format_version": schema.FORMAT_VERSION,
      "split": split,
      "inputs": num_inputs,
      "clips": sum(s["clips"] for s in summaries),
      "total_duration_s": round(sum(s["duration_s"] for s in summaries), 3),
      # .get: summaries of shards written before clips were cut (one clip per input) lack these keys.
      "silent_clips": sum(summary.get("silent_clips", len(summary["silent"])) for summary in summaries),
      "silent": silent,
      "silent_clips_dropped": sum(summary.get("silent_dropped", 0) for summary in summaries),
      "cut_short_count": len(cut_short),
      "cut_short": cut_short,
      "skipped_count": len(skipped),
      "skipped_by_reason": {k: v for k, v in counts.items() if v},
      "skipped": skipped,
      "shards": [os.path.basename(p) for p in shards],
      "options": dataclasses.asdict(options),
      "num_classes": len(vocabulary),
      "elapsed_s": None if elapsed_s is None else round(elapsed_s, 2),
  }


def _fingerprint(jobs: Sequence[Job], options: Options, shard_clips: int, split: str) -> str:
  h = hashlib.sha256()
  h.update(json.dumps([dataclasses.asdict(options), shard_clips, split], sort_keys=True).encode())
  for j in jobs:
    h.update(json.dumps(dataclasses.asdict(j), sort_keys=True).encode())
  return h.hexdigest()


def _worker_init():
  # Workers only decode: keep each to one thread so N workers use N cores.
  os.environ.setdefault("OMP_NUM_THREADS", "1")


def _convert_indexed(args):
  i, job, options, convert = args
  return i, convert(job, options)


def _worker_main(conn) -> None:
  """A decoder process: says "ready", then receives (i, job, options, convert) tuples and sends back
  (i, result); None stops it."""
  _worker_init()
  conn.send("ready")
  while True:
    try:
      args = conn.recv()
    except EOFError:  # The parent went away.
      return
    except Exception as e:  # pylint: disable=broad-except
      # A task this process cannot unpickle (a `convert` it cannot import) would fail for every input:
      # the parent stops with this error rather than skipping everything as `crash`.
      conn.send(("error", f"{type(e).__name__}: {e}"))
      return
    if args is None:
      return
    conn.send(_convert_indexed(args))


def _failed(job: Job, reason: str, detail: str) -> dict:
  return {"path": job.path, "skip": Skip(job.path, reason, detail).as_dict()}


def _mp_context():
  # spawn: never fork the parent, which may have imported TensorFlow (the shard writer). A worker starts in
  # about 0.3 s and is long-lived: only a crash or a timeout starts another. Not forkserver: Python 3.11's
  # forkserver ignores the parent's sys.path, so its workers could import another copy of avcl than the
  # parent's (an editable install, a script that edits sys.path).
  return multiprocessing.get_context("spawn")


class WorkerPool:
  """Decoder processes that run one input each at a time, each input under a time limit.

  A worker that dies (a decoder segfault, os._exit, the OOM killer) costs its own input only, skipped as
  `crash`; a worker that runs past `timeout_s` is killed and its input skipped as `timeout`. Either way a
  fresh worker takes its place and the others carry on (unlike concurrent.futures, whose pool breaks as a
  whole and cannot kill one stuck task). Used by `ingest` (any --workers) and by the Beam pipeline.
  """

  STARTUP_TIMEOUT_S = 120.0

  def __init__(self, workers: int, timeout_s: float):
    self.ctx = _mp_context()
    self.timeout_s = timeout_s
    self.busy: dict = {}  # worker -> (args, deadline)
    self.idle = [self._start(wait=False) for _ in range(max(1, workers))]
    for worker in self.idle:  # Started together, awaited in turn: N workers start in the time of one.
      self._await_ready(worker)

  def _start(self, wait: bool = True):
    parent, child = self.ctx.Pipe()
    proc = self.ctx.Process(target=_worker_main, args=(child,), daemon=True, name="ingest-decoder")
    proc.start()
    child.close()  # Only the worker holds this end, so its death reads as EOF here.
    if wait:
      self._await_ready((proc, parent))
    return proc, parent

  def _await_ready(self, worker) -> None:
    """A worker that cannot start is a broken environment, not a bad input: an error, not a skip (else
    every input would be skipped as `crash`)."""
    proc, conn = worker
    try:
      if conn.poll(self.STARTUP_TIMEOUT_S) and conn.recv() == "ready":
        return
    except (EOFError, OSError):
      pass
    self.close()
    proc.kill()
    proc.join(timeout=5)
    raise IngestError(f"A decoder worker process did not start (exit code {proc.exitcode}; its error is "
                      "above): data_pipeline must import in a fresh Python process (multiprocessing "
                      "'spawn').")

  @staticmethod
  def _stop(worker, kill: bool) -> None:
    proc, conn = worker
    if kill:
      proc.kill()
    conn.close()
    proc.join(timeout=5)

  def submit(self, args) -> bool:
    """Starts `args` = (i, job, options, convert) on an idle worker; False when none is idle."""
    if not self.idle:
      return False
    worker = self.idle.pop()
    try:
      worker[1].send(args)
    except OSError:  # It died while idle (killed from outside): its replacement takes the input.
      self._stop(worker, kill=True)
      worker = self._start()
      worker[1].send(args)
    self.busy[worker] = (args, time.monotonic() + self.timeout_s)
    return True

  def wait(self) -> list[tuple[int, dict]]:
    """Blocks until at least one running input finished, crashed or timed out; returns their (i, result)."""
    out = []
    while not out and self.busy:
      now = time.monotonic()
      first_deadline = min(d for _, d in self.busy.values())
      handles = [h for proc, conn in self.busy for h in (conn, proc.sentinel)]
      ready = set(mp_connection.wait(handles, timeout=max(0.0, first_deadline - now)))
      now = time.monotonic()
      for worker, (args, deadline) in list(self.busy.items()):
        proc, conn = worker
        i, job = args[0], args[1]
        result = None
        # Past the deadline, a result that arrived after `wait` returned still counts (not a timeout).
        if conn in ready or proc.sentinel in ready or (now >= deadline and (conn.poll() or not proc.is_alive())):
          try:
            if conn.poll():
              result = conn.recv()
          except Exception:  # pylint: disable=broad-except
            result = None  # Died while sending (EOF, a half pickle): a crash like any other.
          if result is not None and result[0] == "error":
            raise IngestError(f"A decoder worker could not read its task: {result[1]}")
          if result is None:
            proc.join(timeout=1)  # For its exit code.
            result = (i, _failed(job, "crash", f"the decoder process died (exit code {proc.exitcode}) "
                                 "while converting this input"))
          if result is None or not proc.is_alive():  # A worker that died after sending is replaced too.
            self._stop(worker, kill=True)
            worker = self._start()
        elif now >= deadline:
          result = (i, _failed(job, "timeout", f"converting took longer than the {self.timeout_s:g} s time "
                               "limit (--timeout-s); the decoder process was killed"))
          self._stop(worker, kill=True)
          worker = self._start()
        if result is not None:
          del self.busy[(proc, conn)]
          self.idle.append(worker)
          out.append(result)
    return out

  def run_one(self, args) -> dict:
    """Runs one input to its end (or crash or timeout) and returns its result (the Beam path)."""
    assert self.submit(args), "run_one needs an idle worker"
    return self.wait()[0][1]

  def close(self) -> None:
    for worker in self.idle:
      try:
        worker[1].send(None)
      except OSError:
        pass
    for worker in self.idle:
      self._stop(worker, kill=False)
    for worker in self.busy:  # Interrupted (an error in the parent, --strict): nothing to wait for.
      self._stop(worker, kill=True)
    self.idle, self.busy = [], {}

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _run_workers(pending, workers: int, timeout_s: float, handle) -> None:
  """Runs `pending` in worker processes (always, even one: see WorkerPool), calling `handle(i, result)` as
  results arrive. Inputs start in order; results arrive in any order."""
  queue = list(reversed(pending))
  with WorkerPool(min(workers, len(pending)), timeout_s) as pool:
    while queue or pool.busy:
      while queue and pool.submit(queue[-1]):
        queue.pop()
      for result in pool.wait():
        handle(*result)


def ingest(input_path: str, output: str, *, labels_csv: str | None = None, options: Options = Options(),
           strict: bool = False, workers: int = 0, shard_clips: int = 256, split: str = "train",
           progress: bool | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, convert=convert_job) -> dict:
  """Converts every input into shards of `split` under `output`; returns the manifest (also written).

  `convert(job, options) -> dict` turns one input into a record or a skip (`convert_job`); a replacement must
  be a module-level function (it is pickled to worker processes). Every input is converted in a worker
  process (`WorkerPool`) under a limit of `timeout_s` seconds.
  """
  t0 = time.perf_counter()
  options.validate()
  check_split(split)
  if not timeout_s > 0:
    raise ValueError(f"timeout_s must be > 0, got {timeout_s}.")
  if shard_clips < 1:
    raise ValueError(f"shard_clips must be >= 1, got {shard_clips}.")
  jobs, vocabulary = read_inputs(input_path, labels_csv)
  num_shards = math.ceil(len(jobs) / shard_clips)
  state = os.path.join(output, STATE_DIR)
  os.makedirs(state, exist_ok=True)
  plan_path = os.path.join(state, "plan.json")
  fingerprint = _fingerprint(jobs, options, shard_clips, split)
  if os.path.exists(plan_path):
    with open(plan_path, encoding="utf-8") as f:
      old = json.load(f)
    if old["fingerprint"] != fingerprint:
      raise IngestError(f"{output!r} holds an ingest of other inputs or options (see {plan_path}); "
                        "use a new --output folder or delete that one.")
  else:
    _write_json_atomic(plan_path, {"fingerprint": fingerprint, "inputs": len(jobs), "shards": num_shards})
  labels = io.StringIO()
  csv.writer(labels).writerows([i, name] for i, name in enumerate(vocabulary))
  _write_atomic(os.path.join(output, "labels.csv"), labels.getvalue())

  shard_paths = [os.path.join(output, schema.shard_name(split, k, num_shards)) for k in range(num_shards)]
  summary_paths = [os.path.join(state, f"{split}-{k:05d}.json") for k in range(num_shards)]
  done = [os.path.exists(p) and os.path.exists(s) for p, s in zip(shard_paths, summary_paths)]
  pending = [(i, jobs[i], options, convert) for k in range(num_shards) if not done[k]
             for i in range(k * shard_clips, min(len(jobs), (k + 1) * shard_clips))]
  if any(done):
    log.info("Resuming: %d of %d shards already written.", sum(done), num_shards)

  bar = tqdm(total=len(jobs), initial=len(jobs) - len(pending), unit="video", desc="ingest",
             disable=(not progress) if progress is not None else None)
  buffers: dict[int, dict[int, dict]] = {}

  spool_dir = os.path.join(state, "spool")
  if os.path.isdir(spool_dir):  # Left by an interrupted run; those inputs are converted again.
    for name in os.listdir(spool_dir):
      if name.startswith(f"{split}-"):
        os.remove(os.path.join(spool_dir, name))

  def finish_shard(k):
    shard = buffers.pop(k)
    results = [shard[i] for i in sorted(shard)]
    schema.write_records(shard_paths[k], shard_records(results))
    _write_json_atomic(summary_paths[k], shard_summary(results))
    for r in results:
      if "spool" in r:
        os.remove(r["spool"])

  def handle(i, result):
    if "skip" in result:
      s = result["skip"]
      log.warning("Skipped %s: %s (%s)", s["path"], s["reason"], s["detail"])
      if strict:
        raise IngestError(f"--strict: {s['path']}: {s['reason']} ({s['detail']})")
    if sum(len(r) for r in result.get("records", ())) > SPOOL_BYTES:
      os.makedirs(spool_dir, exist_ok=True)
      path = os.path.join(spool_dir, f"{split}-{i:09d}.rec")
      _spool(path, result["records"])
      result = {**result, "records": [], "spool": path}
    k = i // shard_clips
    buffers.setdefault(k, {})[i] = result
    bar.update(1)
    if len(buffers[k]) == min(len(jobs), (k + 1) * shard_clips) - k * shard_clips:
      finish_shard(k)

  try:
    if pending:
      _run_workers(pending, max(1, workers), timeout_s, handle)
  finally:
    bar.close()

  summaries = []
  for p in summary_paths:
    with open(p, encoding="utf-8") as f:
      summaries.append(json.load(f))
  manifest = build_manifest(summaries, num_inputs=len(jobs), options=options, split=split, shards=shard_paths,
                            vocabulary=vocabulary, elapsed_s=time.perf_counter() - t0)
  _write_json_atomic(os.path.join(output, "manifest.json"), manifest)
  return manifest


def add_arguments(p: argparse.ArgumentParser) -> None:
  """The flags of `Options`, --shard-clips, --split and --timeout-s: the same in ingest and beam_ingest."""
  p.add_argument("--sample-rate", type=int, default=16000, help="Stored audio rate, Hz.")
  p.add_argument("--fps", type=float, default=10.0, help="Stored frames per second.")
  p.add_argument("--size", type=int, default=64, help="Stored frames are SIZE x SIZE (centre crop).")
  p.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of stored frames.")
  p.add_argument("--shard-clips", type=int, default=256, help="Inputs per shard.")
  p.add_argument("--split", default="train", help="Split name in the shard file names.")
  p.add_argument("--skip-silent", action="store_true", help="Skip silent clips (default: keep and count).")
  p.add_argument("--max-clip-seconds", type=float, default=10.0,
                 help="Cut longer videos (or spans) into clips of at most this many seconds, one record each.")
  p.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S,
                 help="Time limit per input, seconds: a decoder past it is killed and the input skipped as "
                 "'timeout'.")


def options_from_args(args: argparse.Namespace) -> Options:
  return Options(sample_rate=args.sample_rate, fps=args.fps, size=args.size, jpeg_quality=args.jpeg_quality,
                 skip_silent=args.skip_silent, max_clip_seconds=args.max_clip_seconds)


def summary_line(m: dict, manifest_path: str) -> str:
  """What a finished ingest prints: counts from its manifest `m`, and where the manifest is."""
  return (f"{m['clips']} clips ({m['total_duration_s']:.1f} s, {m['silent_clips']} silent) from {m['inputs']} "
          f"inputs in {len(m['shards'])} shards; skipped {m['skipped_count']} {m['skipped_by_reason']}; "
          f"{manifest_path}")


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog="python -m data_pipeline.ingest", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="See the module docstring (data_pipeline/ingest.py) for the details.")
  p.add_argument("--input", required=True, help="Folder of videos (recursive) or CSV path[,start_s,end_s,labels].")
  p.add_argument("--output", required=True, help="Output folder for shards, manifest.json and labels.csv.")
  p.add_argument("--labels", default=None, help="Label vocabulary CSV: name, or index,name[,alias...] rows.")
  p.add_argument("--strict", action="store_true", help="Stop with an error at the first bad input.")
  p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="Decoder processes (default: cores).")
  add_arguments(p)
  p.add_argument("--quiet", action="store_true", help="No progress bar or per-skip warnings.")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
  options = options_from_args(args)
  try:
    m = ingest(args.input, args.output, labels_csv=args.labels, options=options, strict=args.strict,
               workers=args.workers, shard_clips=args.shard_clips, split=args.split,
               progress=False if args.quiet else None, timeout_s=args.timeout_s)
  except (IngestError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(summary_line(m, os.path.join(args.output, 'manifest.json')))
  return 0


if __name__ == "__main__":
  sys.exit(main())
