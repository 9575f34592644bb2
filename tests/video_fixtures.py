"""Tiny videos made with PyAV once per test session (good, odd-but-valid and broken ones)."""
import os

import pytest

from tests.video_files import make_video

# Flash/click instants of the alignment video (s); flashes last 0.25 s, clicks start with them.
EVENTS = (0.55, 1.35, 2.25, 3.15)

GOOD = {
    "good.mp4": dict(),
    "stereo48k.mkv": dict(channels=2, sample_rate=48000),
    "surround51.webm": dict(channels=6, sample_rate=48000),
    "audio8k.avi": dict(sample_rate=8000),
    "vfr.mov": dict(vfr=True),
    "portrait.mkv": dict(width=36, height=64),
    "huge.mp4": dict(width=1920, height=1080, seconds=0.5),
    "silent.mp4": dict(silent=True),
}


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory):
  """A folder with every kind of input; returns (folder, {name: expected skip reason or None})."""
  d = str(tmp_path_factory.mktemp("videos"))
  expected = {}
  for name, kw in GOOD.items():
    make_video(os.path.join(d, name), **kw)
    expected[name] = None
  os.makedirs(os.path.join(d, "sub"))
  make_video(os.path.join(d, "sub", "nested.mp4"))
  expected["sub/nested.mp4"] = None
  make_video(os.path.join(d, "no_audio.mp4"), audio=False)
  expected["no_audio.mp4"] = "no_audio"
  make_video(os.path.join(d, "no_video.mp4"), video=False)
  expected["no_video.mp4"] = "no_video"
  with open(os.path.join(d, "corrupt.mp4"), "wb") as f:
    f.write(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
  expected["corrupt.mp4"] = "corrupt"
  open(os.path.join(d, "empty.mp4"), "wb").close()
  expected["empty.mp4"] = "zero_duration"
  # Matroska writes its header first, so a file cut in half still opens and decodes its first half.
  long = make_video(os.path.join(d, "long.tmp.mkv"), seconds=3.0)
  data = open(long, "rb").read()
  os.remove(long)
  with open(os.path.join(d, "truncated.mkv"), "wb") as f:
    f.write(data[:len(data) // 2])
  expected["truncated.mkv"] = "truncated"
  # An AVI whose video FourCC names no codec that FFmpeg can decode.
  avi = make_video(os.path.join(d, "codec.tmp.avi"))
  data = open(avi, "rb").read()
  os.remove(avi)
  with open(os.path.join(d, "unsupported.avi"), "wb") as f:
    f.write(data.replace(b"MJPG", b"QQQQ"))
  expected["unsupported.avi"] = "unsupported_codec"
  with open(os.path.join(d, "notes.txt"), "w") as f:  # Not a video extension: ignored.
    f.write("not a video")
  return d, expected


@pytest.fixture(scope="session")
def flash_click_video(tmp_path_factory):
  """A 4 s variable-frame-rate H.264/AAC video whose flashes and clicks start at EVENTS."""
  d = str(tmp_path_factory.mktemp("flash"))
  return make_video(os.path.join(d, "flash.mp4"), seconds=4.0, fps=30, vfr=True, flashes=EVENTS,
                    clicks=EVENTS, silent=True)
