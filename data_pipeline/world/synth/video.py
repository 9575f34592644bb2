"""Frames that show what sounds.

Every sound source in a clip has a visual identity (`Sprite`): a speaker's avatar (face colours and hair
fixed per speaker), an instrument's sprite (a shape per family or effect, a colour per GM program), a word's
written form. A sprite is drawn at a slowly drifting position, and its size, brightness and moving parts
(mouth, rotor, hands, waves) follow the source's own loudness envelope, sampled once per frame, so sound
onsets and visual changes coincide. The background carries context (the language of the speech, a stage for
music, outdoors for events) with per-clip variation.

Frames are drawn at the stored size (64x64 by default) with PIL and encoded as JPEG.
"""
import colorsys
import dataclasses
import functools
import io
import math
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

_JPEG_QUALITY = 85
_SENSOR_NOISE = 2.0  # Std of per-pixel camera noise (0..255 scale).


@dataclasses.dataclass(frozen=True)
class Sprite:
  """How one source looks. `shape`: "avatar", an instrument family, "note" (a melodic program outside the
  families), or a non-speech event class; `text`: a written form shown while the source sounds."""
  shape: str
  hue: float  # 0..1.
  accent_hue: float = 0.0  # Second colour (hair for avatars, detail for instruments).
  text: str = ""


def stable_unit(*keys) -> float:
  """A number in [0, 1) fixed by `keys` (not by any random state): identities look the same in every
  clip and every run."""
  return (zlib.crc32("/".join(map(str, keys)).encode()) % 100003) / 100003.0


def _rgb(hue: float, sat: float, val: float) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb(hue % 1.0, sat, val)) * 255.0


def background(context: str, rng: np.random.Generator, size: int) -> np.ndarray:
  """The static scene -> f32[size, size, 3] in 0..255.

  Speech contexts ("lang:xx") are stripes whose colours, angle and period are fixed per language; "stage"
  is a dark room under a spotlight; "outdoors" is sky over ground. Each clip shifts hue, phase and light a
  little, so the context is recognisable but no two backgrounds are equal.
  """
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  if context.startswith("lang:"):
    u = stable_unit(context, "hue")
    hue = u + rng.uniform(-0.03, 0.03)
    angle = math.pi * (int(stable_unit(context, "angle") * 4) / 4 + rng.uniform(-0.05, 0.05))
    period = 0.12 + 0.2 * stable_unit(context, "period")
    coord = xx * math.cos(angle) + yy * math.sin(angle)
    stripes = 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * (coord / period + rng.uniform(0, 1))))
    second = hue + 0.25 + 0.5 * stable_unit(context, "second")
    a, b = _rgb(hue, 0.45, 0.55), _rgb(second, 0.35, 0.35)
    img = stripes[..., None] * a + (1 - stripes[..., None]) * b
  elif context == "stage":
    cx, cy = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.5)
    light = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.12)
    img = (0.15 + 0.5 * light[..., None]) * _rgb(rng.uniform(0.05, 0.15), 0.5, 0.9)
  elif context == "outdoors":
    horizon = rng.uniform(0.55, 0.75)
    sky = _rgb(rng.uniform(0.55, 0.62), 0.4, 0.9) * (0.7 + 0.3 * yy[..., None])
    ground = _rgb(rng.uniform(0.22, 0.32), 0.5, 0.5) * np.ones_like(yy)[..., None]
    img = np.where((yy > horizon)[..., None], ground, sky)
  else:
    raise ValueError(f"context={context!r}: expected 'lang:<code>', 'stage' or 'outdoors'")
  return np.clip(img * rng.uniform(0.85, 1.15), 0, 255).astype(np.float32)


@functools.cache
def _font(size: int):
  return ImageFont.load_default(size=size)


def _draw_sprite(draw: ImageDraw.ImageDraw, sprite: Sprite, cx: float, cy: float, scale: float, env: float,
                 phase: float):
  """Draws one sprite centred at (cx, cy); `scale` ~ half-size in px, `env` in [0, 1] is the loudness
  of this frame, `phase` accumulates loudness over time (for rotating/oscillating parts)."""
  light = 0.35 + 0.65 * env
  col = tuple(int(c) for c in _rgb(sprite.hue, 0.75, light))
  acc = tuple(int(c) for c in _rgb(sprite.accent_hue, 0.6, 0.3 + 0.6 * env))
  dark = (20, 20, 20)
  s = scale
  shape = sprite.shape
  if shape == "avatar":
    draw.ellipse([cx - s, cy - s, cx + s, cy + s], fill=col)
    draw.chord([cx - s, cy - s * 1.05, cx + s, cy + s * 0.2], 180, 360, fill=acc)  # Hair.
    ex = s * 0.4
    for sx in (-1, 1):
      draw.ellipse([cx + sx * ex - 1.5, cy - 1.5, cx + sx * ex + 1.5, cy + 1.5], fill=dark)
    mouth = 0.5 + s * 0.5 * env  # The mouth opens with loudness.
    draw.ellipse([cx - s * 0.35, cy + s * 0.45 - mouth / 2, cx + s * 0.35, cy + s * 0.45 + mouth / 2],
                 fill=(90, 10, 20))
  elif shape == "keyboard":
    draw.rectangle([cx - s * 1.3, cy - s * 0.5, cx + s * 1.3, cy + s * 0.5], fill=(235, 235, 225))
    for i in range(6):
      x = cx - s * 1.1 + i * s * 0.44
      draw.rectangle([x, cy - s * 0.5, x + s * 0.18, cy], fill=col)
  elif shape == "mallet":
    for i in range(4):
      w = s * (1.2 - 0.2 * i)
      y = cy - s * 0.8 + i * s * 0.5
      draw.rectangle([cx - w, y, cx + w, y + s * 0.3], fill=col)
  elif shape == "organ":
    for i in range(5):
      h = s * (0.6 + 0.25 * (2 - abs(i - 2)))
      x = cx - s + i * s * 0.45
      draw.rectangle([x, cy + s * 0.7 - 2 * h, x + s * 0.3, cy + s * 0.7], fill=col)
  elif shape == "guitar":
    draw.ellipse([cx - s * 0.7, cy - s * 0.2, cx + s * 0.7, cy + s], fill=col)
    draw.rectangle([cx - s * 0.12, cy - s * 1.3, cx + s * 0.12, cy + s * 0.3], fill=acc)
    draw.ellipse([cx - s * 0.2, cy + s * 0.2, cx + s * 0.2, cy + s * 0.6], fill=dark)
  elif shape == "bass":
    draw.ellipse([cx - s * 0.55, cy - s * 0.1, cx + s * 0.55, cy + s * 1.1], fill=col)
    draw.rectangle([cx - s * 0.1, cy - s * 1.5, cx + s * 0.1, cy + s * 0.3], fill=acc)
  elif shape == "string":
    draw.ellipse([cx - s * 0.5, cy - s * 0.6, cx + s * 0.5, cy + s * 0.1], fill=col)
    draw.ellipse([cx - s * 0.6, cy - s * 0.05, cx + s * 0.6, cy + s * 0.9], fill=col)
    draw.line([cx + s * 0.9, cy - s * 0.9, cx - s * 0.9, cy + s * 0.5], fill=acc, width=2)  # Bow.
  elif shape == "brass":
    draw.rectangle([cx - s * 1.2, cy - s * 0.12, cx + s * 0.3, cy + s * 0.12], fill=col)
    draw.polygon([(cx + s * 0.2, cy), (cx + s * 1.2, cy - s * 0.6), (cx + s * 1.2, cy + s * 0.6)], fill=col)
  elif shape == "reed":
    draw.rectangle([cx - s * 0.12, cy - s * 1.2, cx + s * 0.12, cy + s * 0.6], fill=col)
    draw.ellipse([cx - s * 0.5, cy + s * 0.3, cx + s * 0.3, cy + s * 1.0], fill=col)
    for i in range(4):
      draw.point((cx, cy - s * 0.9 + i * s * 0.35), fill=acc)
  elif shape == "flute":
    draw.rectangle([cx - s * 1.4, cy - s * 0.1, cx + s * 1.4, cy + s * 0.1], fill=col)
    for i in range(5):
      x = cx - s * 0.6 + i * s * 0.35
      draw.ellipse([x - 1, cy - 1, x + 1, cy + 1], fill=dark)
  elif shape == "synth_lead":
    draw.rectangle([cx - s, cy - s * 0.7, cx + s, cy + s * 0.7], outline=col, width=2)
    amp = s * 0.5 * (0.3 + env)
    pts = [(cx - s * 0.8, cy + amp), (cx - s * 0.4, cy + amp), (cx - s * 0.4, cy - amp), (cx, cy - amp),
           (cx, cy + amp), (cx + s * 0.4, cy + amp), (cx + s * 0.4, cy - amp), (cx + s * 0.8, cy - amp)]
    draw.line(pts, fill=col, width=2)
  elif shape == "vocal":
    draw.ellipse([cx - s * 0.4, cy - s, cx + s * 0.4, cy - s * 0.2], fill=col)
    draw.rectangle([cx - s * 0.08, cy - s * 0.2, cx + s * 0.08, cy + s], fill=(120, 120, 120))
  elif shape == "note":
    draw.ellipse([cx - s * 0.5, cy + s * 0.2, cx + s * 0.3, cy + s * 0.8], fill=col)
    draw.rectangle([cx + s * 0.15, cy - s, cx + s * 0.3, cy + s * 0.5], fill=col)
    draw.polygon([(cx + s * 0.3, cy - s), (cx + s * 0.8, cy - s * 0.5), (cx + s * 0.3, cy - s * 0.5)],
                 fill=acc)
  elif shape == "drums":
    draw.rectangle([cx - s * 0.8, cy - s * 0.3, cx + s * 0.8, cy + s * 0.7], fill=col)
    draw.ellipse([cx - s * 0.8, cy - s * 0.6, cx + s * 0.8, cy], fill=(230, 230, 210))
    lift = s * (1 - env)  # The stick hits the skin on each beat.
    draw.line([cx + s * 0.2, cy - s * 0.3 - lift, cx + s * 1.1, cy - s - lift], fill=acc, width=2)
  elif shape == "bird":
    flap = s * (0.8 * env - 0.4)
    draw.ellipse([cx - s * 0.6, cy - s * 0.3, cx + s * 0.6, cy + s * 0.3], fill=col)
    draw.polygon([(cx - s * 0.2, cy), (cx + s * 0.3, cy), (cx, cy - s * 0.2 - flap * 2)], fill=acc)
    draw.polygon([(cx + s * 0.6, cy - s * 0.1), (cx + s, cy), (cx + s * 0.6, cy + s * 0.1)], fill=(240, 180, 0))
  elif shape == "telephone":
    jitter = s * 0.15 * env * math.sin(phase * 20)  # It rings: the handset shakes.
    draw.rectangle([cx - s * 0.8, cy - s * 0.1, cx + s * 0.8, cy + s * 0.8], fill=col)
    draw.rectangle([cx - s + jitter, cy - s * 0.6, cx + s + jitter, cy - s * 0.25], fill=acc)
  elif shape == "helicopter":
    draw.ellipse([cx - s * 0.7, cy - s * 0.3, cx + s * 0.5, cy + s * 0.5], fill=col)
    draw.line([cx + s * 0.4, cy, cx + s * 1.2, cy - s * 0.2], fill=col, width=2)
    angle = phase * 3.0  # The rotor turns as fast as it is loud.
    dx, dy = s * 1.2 * math.cos(angle), s * 0.25 * math.sin(angle)
    draw.line([cx - dx, cy - s * 0.5 - dy, cx + dx, cy - s * 0.5 + dy], fill=dark, width=2)
  elif shape == "applause":
    gap = s * 0.8 * (1 - env)
    for sx in (-1, 1):
      x = cx + sx * (gap / 2 + s * 0.25)
      draw.ellipse([x - s * 0.3, cy - s * 0.6, x + s * 0.3, cy + s * 0.6], fill=col)
  elif shape == "gunshot":
    r = s * (0.3 + 1.2 * env)
    pts = [(cx + (r if i % 2 == 0 else r * 0.4) * math.cos(i * math.pi / 6),
            cy + (r if i % 2 == 0 else r * 0.4) * math.sin(i * math.pi / 6)) for i in range(12)]
    draw.polygon(pts, fill=(255, int(160 + 90 * env), 40))
  elif shape == "sea_waves":
    amp = s * 0.5 * (0.2 + env)
    for row in range(3):
      y = cy - s * 0.6 + row * s * 0.6
      pts = [(cx - s * 1.3 + k * s * 0.2, y + amp * math.sin(k * 0.9 + phase * 4)) for k in range(14)]
      draw.line(pts, fill=col, width=2)
  elif shape == "beep":
    draw.rectangle([cx - s * 0.7, cy - s * 0.5, cx + s * 0.7, cy + s * 0.5], fill=(60, 60, 60))
    r = s * 0.35
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in _rgb(sprite.hue, 0.9, 0.15 + 0.85 * env)))
  elif shape == "siren":
    draw.rectangle([cx - s * 0.8, cy + s * 0.2, cx + s * 0.8, cy + s * 0.5], fill=(80, 80, 80))
    draw.chord([cx - s * 0.6, cy - s * 0.6, cx + s * 0.6, cy + s * 0.6], 180, 360,
               fill=tuple(int(c) for c in _rgb(sprite.hue, 0.9, 0.2 + 0.8 * env)))
    beam = phase * 2.0
    draw.line([cx, cy, cx + s * 1.4 * math.cos(beam), cy - s * 0.8 * abs(math.sin(beam))],
              fill=(255, 255, 160), width=1)
  else:
    raise ValueError(f"sprite.shape={shape!r} has no drawing")
  if sprite.text:
    # The written form appears while the word is heard (brightness follows loudness).
    grey = int(40 + 215 * env)
    font = _font(13)
    width = draw.textlength(sprite.text, font=font)
    draw.text((cx - width / 2, cy + s * 1.1), sprite.text, fill=(grey, grey, grey), font=font)


def render_frames(sprites: list[Sprite], envelopes: np.ndarray, context: str, rng: np.random.Generator,
                  size: int = 64, fps: float = 10.0) -> list[bytes]:
  """Draws a clip.

  Args:
    sprites: one per source.
    envelopes: f32[sources, frames], each source's loudness per frame scaled to [0, 1].
    context: background context (see `background`).
    rng: per-clip randomness (placement, drift, background variation, camera noise).
  Returns:
    frames JPEG bytes, one per frame, each `size` x `size` RGB.
  """
  envelopes = np.asarray(envelopes, np.float32)
  if envelopes.ndim != 2 or envelopes.shape[0] != len(sprites):
    raise ValueError(f"envelopes {envelopes.shape} must be [sources={len(sprites)}, frames]")
  num_frames = envelopes.shape[1]
  bg = background(context, rng, size)
  n = len(sprites)
  # Sources side by side (left to right, random order), each drifting slowly around its spot.
  slots = rng.permutation(n)
  base_x = [(slots[i] + 0.5) / n * size + rng.uniform(-0.08, 0.08) * size for i in range(n)]
  base_y = [rng.uniform(0.35, 0.55) * size for _ in range(n)]
  base_s = [size * rng.uniform(0.11, 0.16) / max(1.0, 0.65 * n) * 1.5 for _ in range(n)]
  # Slow drift (< 0.2 px per frame): alive, but far less change than a sound onset causes.
  drift = [(rng.uniform(0.5, 1.5), rng.uniform(0.05, 0.2), rng.uniform(0, 2 * np.pi)) for _ in range(n)]
  phases = np.cumsum(envelopes, axis=1) * 0.5
  frames = []
  for f in range(num_frames):
    t = f / fps
    img = Image.fromarray(bg.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for i, sprite in enumerate(sprites):
      amp, freq, ph = drift[i]
      cx = base_x[i] + amp * math.sin(2 * math.pi * freq * t + ph)
      cy = base_y[i] + amp * 0.5 * math.cos(2 * math.pi * freq * t + ph)
      env = float(np.clip(envelopes[i, f], 0.0, 1.0))
      _draw_sprite(draw, sprite, cx, cy, base_s[i] * (0.75 + 0.5 * env), env, float(phases[i, f]))
    pixels = np.asarray(img, np.float32) + rng.normal(0.0, _SENSOR_NOISE, (size, size, 3))
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=_JPEG_QUALITY)
    frames.append(out.getvalue())
  return frames
