"""Any audio file, or the audio track of any video, as mono float32 at a chosen rate.

Shared by `avcl.embed` (embed your own files) and the folder tasks of `avcl.evaluate.tasks` (probe your own
labelled recordings). Formats: what libsndfile decodes (wav, flac, ogg, mp3, aiff, ...; exact PCM), else
FFmpeg through PyAV (m4a, aac, opus, and the audio track of mp4, mkv, webm, mov, ... videos). Channels are
averaged to mono (FFmpeg's LFE left out), the rate converted with soxr (HQ, streamed in BLOCK_SECONDS
blocks, so a long file's memory stays bounded while it is read). Paths may be local or URLs (gs://, through
TensorFlow's file system; data_pipeline.paths).

An input that cannot be read raises `Skip` with one of SKIP_REASONS and a detail; callers decide whether
to skip it (counted and reported) or to fail.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import av
import numpy as np
import soundfile as sf
import soxr

from data_pipeline import ingest, paths

AUDIO_EXTENSIONS = (".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff",
                    ".au", ".caf", ".w64", ".wma", ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg",
                    ".mpeg", ".3gp")
SKIP_REASONS = ("missing", "empty", "unreadable", "no_audio", "corrupt", "non_finite")
# Input decoded per block: what bounds a long file's memory (2 s of 44.1 kHz stereo: 0.7 MB as float32).
BLOCK_SECONDS = 2.0


class Skip(Exception):
  """An input that cannot be embedded; `reason` is one of SKIP_REASONS."""

  def __init__(self, reason: str, detail: str):
    assert reason in SKIP_REASONS, reason
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail


@dataclasses.dataclass
class Source:
  """An opened input: its rate and channels, and its blocks f32[frames, channels] at that rate."""
  sample_rate: int
  channels: int
  blocks: Iterator[np.ndarray]
  decoder: str


def _soundfile_source(f) -> Source | None:
  """libsndfile: exact PCM for wav/flac/aiff, and ogg/mp3. None when it does not recognise the file."""
  try:
    snd = sf.SoundFile(f)
  except (sf.LibsndfileError, RuntimeError, TypeError):
    return None
  block = max(1, int(BLOCK_SECONDS * snd.samplerate))

  def blocks():
    with snd:
      while True:
        x = snd.read(block, dtype="float32", always_2d=True)
        if x.shape[0] == 0:
          return
        yield x

  return Source(int(snd.samplerate), int(snd.channels), blocks(), "soundfile")


def _pyav_source(f) -> Source:
  """FFmpeg through PyAV: every other audio format, and the audio track of videos."""
  try:
    container = av.open(f, mode="r")
  except (av.FFmpegError, ValueError, OSError) as e:
    raise Skip("unreadable", f"neither libsndfile nor FFmpeg recognises it ({type(e).__name__}: {e})") from e
  if not container.streams.audio:
    container.close()
    raise Skip("no_audio", f"no audio stream ({len(container.streams.video)} video stream(s))")
  stream = container.streams.audio[0]
  rate = int(stream.sample_rate or stream.codec_context.sample_rate or 0)
  channels = int(stream.codec_context.channels or 0) if hasattr(stream.codec_context, "channels") else 0
  if rate <= 0:
    container.close()
    raise Skip("unreadable", "the audio stream declares no sample rate")
  block = int(BLOCK_SECONDS * rate)

  def blocks():
    # swresample converts any sample format to planar float at the stream's first rate (following any change
    # mid-stream); ingest.downmix averages the channels, LFE left out. Blocks come out mono.
    resampler = av.AudioResampler(format="fltp", rate=rate)
    pending, count = [], 0
    try:
      for frame in container.decode(stream):
        for out in resampler.resample(frame):
          pending.append(ingest.downmix(out))
          count += pending[-1].size
        if count >= block:
          yield np.concatenate(pending)[:, None]
          pending, count = [], 0
      for out in resampler.resample(None):
        pending.append(ingest.downmix(out))
      if pending:
        yield np.concatenate(pending)[:, None]
    finally:
      container.close()

  return Source(rate, channels or 1, blocks(), "pyav")


def open_source(path: str) -> Source:
  """Opens `path` with libsndfile, else PyAV; raises Skip when neither can (or it does not exist/is empty)."""
  if not paths.exists(path):
    raise Skip("missing", "no such file")
  try:
    f = paths.open_read(path)
    head = f.read(1)
  except Exception as e:  # pylint: disable=broad-except  (OSError locally; TensorFlow's OpError for gs:// and other URLs)
    raise Skip("unreadable", f"cannot be opened ({type(e).__name__}: {e})") from e
  if not head:
    f.close()
    raise Skip("empty", "0 bytes")
  f.seek(0)
  source = _soundfile_source(f)
  if source is not None:
    return source
  f.seek(0)
  return _pyav_source(f)


def read_audio(path: str, sample_rate: int) -> Iterator[tuple[np.ndarray, Source]]:
  """Mono f32 blocks of `path` at `sample_rate` (streamed: soxr HQ, channels averaged), each with the Source.

  Raises Skip for a missing, empty, unreadable, audio-less, corrupt or non-finite input (possibly after
  some blocks: the caller drops what it got)."""
  source = open_source(path)
  resampler = soxr.ResampleStream(source.sample_rate, sample_rate, 1, dtype="float32", quality="HQ") \
      if source.sample_rate != sample_rate else None
  seen = 0
  try:
    for block in source.blocks:
      if not np.all(np.isfinite(block)):
        end = (seen + len(block)) / source.sample_rate
        raise Skip("non_finite", f"NaN or Inf samples within the first {end:.2f} s")
      seen += block.shape[0]
      mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
      out = resampler.resample_chunk(mono) if resampler is not None else mono
      if out.size:
        yield out, source
    if resampler is not None:
      out = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
      if out.size:
        yield out, source
  except Skip:
    raise
  except Exception as e:  # pylint: disable=broad-except  (any decoder failure is this input's, not the run's)
    raise Skip("corrupt", f"decoding failed after {seen / source.sample_rate:.2f} s ({type(e).__name__}: {e})") \
        from e
  if seen == 0:
    raise Skip("empty", "no audio samples")


def load_audio(path: str, sample_rate: int) -> np.ndarray:
  """The whole of `path` as mono f32 at `sample_rate`, as `read_audio` streams it (for checks, short files)."""
  return np.concatenate([b for b, _ in read_audio(path, sample_rate)])


def files_under(directory: str) -> list[str]:
  """Every AUDIO_EXTENSIONS file under `directory`, recursively, sorted (local or URL); other files ignored."""
  return [p for p in paths.walk_files(directory) if p.lower().endswith(AUDIO_EXTENSIONS)]


def list_inputs(inputs: Sequence[str], *, flag: str = "input") -> list[str]:
  """Files named, and the AUDIO_EXTENSIONS files under folders named (recursively, sorted); a name that is
  neither is kept (it is reported as missing). `flag` names the inputs in the error for an empty folder."""
  out = []
  for item in inputs:
    if paths.isdir(item):
      found = files_under(item)
      if not found:
        raise ValueError(f"{flag} {item!r}: no audio or video files ({', '.join(AUDIO_EXTENSIONS)}) in it")
      out += found
    else:
      out.append(item)
  return out
