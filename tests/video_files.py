"""Small synthetic video files written with PyAV, for tests and the ingest benchmark (benchmarks/input_pipeline.py).

Frames are dark with a moving bright bar; optional flashes turn the whole frame white. Audio is a quiet tone
(or silence) with optional clicks (short loud bursts). Flashes and clicks placed at the same times give a
clip whose audio-visual alignment can be checked after ingest and cropping.
"""
from __future__ import annotations

import fractions
from collections.abc import Sequence

import av
import numpy as np

# Codecs per container extension: (video codec, audio codec).
_CODECS = {
    ".mp4": ("libx264", "aac"),
    ".mkv": ("libx264", "aac"),
    ".webm": ("libvpx", "libopus"),
    ".avi": ("mjpeg", "pcm_s16le"),
    ".mov": ("mpeg4", "aac"),
}


def make_video(path: str, *, seconds: float = 1.0, fps: float = 25.0, width: int = 32, height: int = 24,
               sample_rate: int = 16000, channels: int = 1, audio: bool = True, video: bool = True,
               silent: bool = False, flashes: Sequence[float] = (), clicks: Sequence[float] = (),
               flash_seconds: float = 0.25, vfr: bool = False, rotation: int = 0, halves: bool = False,
               seed: int = 0, audio_codec: str | None = None, nan_at: Sequence[float] = (),
               gap_s: float = 0.0) -> str:
  """Writes a video file (container from the extension of `path`) and returns `path`.

  `flashes`/`clicks`: times (s) at which a white frame period / a click starts. `vfr`: frame durations
  alternate between 0.5/fps and 1.5/fps (variable frame rate, same mean rate).
  `channels`: 1, 2 or 6 (5.1). `rotation`: display-matrix rotation, degrees counter-clockwise (as phones
  store portrait video). `halves`: frames are red on the left half and blue on the right (no moving bar).
  `audio_codec`: instead of the container's default (e.g. "pcm_f32le", float samples stored as they are).
  `nan_at`: times (s) of audio samples set to NaN (a broken float source; needs a float PCM `audio_codec`).
  `gap_s`: one more video frame, `gap_s` seconds after the last (a crafted timestamp gap; use .mkv).
  """
  ext = path[path.rfind("."):]
  vcodec, acodec = _CODECS[ext]
  acodec = audio_codec or acodec
  rng = np.random.default_rng(seed)
  with av.open(path, "w") as out:
    vs = as_ = None
    if video:
      vs = out.add_stream(vcodec, rate=int(round(fps)))
      if vfr:
        vs.codec_context.time_base = fractions.Fraction(1, 1000)
      vs.width, vs.height = width, height
      vs.pix_fmt = "yuvj420p" if vcodec == "mjpeg" else "yuv420p"
      vs.time_base = fractions.Fraction(1, 1000) if vfr or ext != ".avi" else fractions.Fraction(1, int(fps))
      if rotation:
        vs.set_display_rotation(rotation)
      if vcodec == "libx264":
        vs.options = {"preset": "ultrafast", "bf": "0"}
    if audio:
      as_ = out.add_stream(acodec, rate=sample_rate)
      as_.layout = {1: "mono", 2: "stereo", 6: "5.1"}[channels]
    out.start_encoding()  # Headers even when no frame follows (seconds=0: a zero-duration file).
    # Video frames.
    if vs is not None:
      t, i = 0.0, 0
      while t < seconds - 1e-9:
        img = np.full([height, width, 3], 20, np.uint8)
        x = int((t / seconds) * width) % width
        img[:, x:x + max(1, width // 8)] = [200, 60, 60]
        if halves:
          img[:, :width // 2] = [255, 0, 0]
          img[:, width // 2:] = [0, 0, 255]
        if any(f <= t + 1e-9 < f + flash_seconds for f in flashes):
          img[:] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        if ext == ".avi" and not vfr:
          frame.pts, frame.time_base = i, fractions.Fraction(1, int(fps))
        else:
          frame.pts, frame.time_base = int(round(t * 1000)), fractions.Fraction(1, 1000)
        for p in vs.encode(frame):
          out.mux(p)
        dt = 1.0 / fps
        if vfr:
          dt *= 0.5 if i % 2 == 0 else 1.5
        t += dt
        i += 1
      if gap_s:
        frame = av.VideoFrame.from_ndarray(np.full([height, width, 3], 255, np.uint8), format="rgb24")
        frame.pts, frame.time_base = int(round((t + gap_s) * 1000)), fractions.Fraction(1, 1000)
        for p in vs.encode(frame):
          out.mux(p)
      for p in vs.encode(None):
        out.mux(p)
    # Audio.
    if as_ is not None:
      n = int(round(seconds * sample_rate))
      ts = np.arange(n) / sample_rate
      mono = np.zeros(n) if silent else 0.05 * np.sin(2 * np.pi * 440.0 * ts) + 0.01 * rng.standard_normal(n)
      for c in clicks:
        j = int(round(c * sample_rate))
        mono[j:j + max(1, sample_rate // 200)] = 0.9  # 5 ms burst.
      for t_nan in nan_at:
        mono[min(n - 1, int(round(t_nan * sample_rate)))] = np.nan
      # Different gains per channel, so downmixing has something to do.
      data = np.stack([mono * (1.0 - 0.1 * k) for k in range(channels)]).astype(np.float32)
      frame_size = as_.codec_context.frame_size or 1024
      for s in range(0, n, frame_size):
        chunk = np.ascontiguousarray(data[:, s:s + frame_size])
        if acodec == "pcm_s16le":
          chunk = (np.clip(chunk, -1, 1) * 32767).astype(np.int16).T.reshape(1, -1).copy()
          frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout=as_.layout.name)
        elif acodec == "pcm_f32le":  # Packed float: NaN and Inf reach the file unchanged.
          chunk = chunk.T.reshape(1, -1).copy()
          frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout=as_.layout.name)
        else:
          if chunk.shape[1] < frame_size:  # Encoders with a fixed frame size need whole frames.
            chunk = np.pad(chunk, [(0, 0), (0, frame_size - chunk.shape[1])])
          frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=as_.layout.name)
        frame.sample_rate = sample_rate
        frame.pts = s
        frame.time_base = fractions.Fraction(1, sample_rate)
        for p in as_.encode(frame):
          out.mux(p)
      for p in as_.encode(None):
        out.mux(p)
  return path
