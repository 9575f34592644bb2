"""A lean eSpeak NG process that synthesises every utterance in a fresh fork of itself.

eSpeak carries state from one utterance to the next (wave phase, pitch flutter, resonators, noise generator;
neither espeak_Terminate + espeak_Initialize nor espeak_ng_SetRandSeed resets all of it), so an utterance
synthesised after others differs from the same utterance synthesised first. Here eSpeak is initialised once
and never speaks; each request forks a child that speaks once from that pristine state and exits, so the same
request always gives the same samples. The process imports nothing but the standard library (it is run as a
script, not through the package) so forking it costs well under a millisecond, unlike forking a worker that
holds numpy, PIL and the soundfont.

Protocol over stdin/stdout, each message a 4-byte little-endian length then the payload:
  start-up  server -> client: b"OK" + sample rate as 4 bytes, or b"ER" + message.
  request   client -> server: UTF-8 JSON {"voice", "rate", "pitch", "range", "seed", "text"};
                              an empty message asks the server to exit.
  response  server -> client: b"\\0" + int16 little-endian samples, or b"\\1" + UTF-8 error message.

Usage (by `speech._Engine`): python espeak_server.py LIBRARY_PATH DATA_PATH
Without os.fork (Windows) it speaks in-process: correct speech, but not bit-reproducible.
"""
import ctypes
import json
import os
import struct
import sys

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE = 1, 2, 3, 4


def _read_message(stream) -> bytes | None:
  header = stream.read(4)
  if len(header) < 4:
    return None
  (length,) = struct.unpack("<I", header)
  data = stream.read(length)
  if len(data) < length:
    return None
  return data


def _write_message(stream, payload: bytes):
  stream.write(struct.pack("<I", len(payload)))
  stream.write(payload)
  stream.flush()


class _Speaker:
  def __init__(self, library_path: str, data_path: str):
    lib = ctypes.CDLL(library_path)
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_ng_SetRandSeed.restype = None
    self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), 0)
    if self.rate <= 0:
      raise RuntimeError(f"espeak_Initialize failed (returned {self.rate}) with data at {data_path}")
    self._chunks: list[bytes] = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                     ctypes.c_void_p)
    self._callback = callback_type(self._collect)  # Kept alive as long as eSpeak may call it.
    lib.espeak_SetSynthCallback(self._callback)
    self.lib = lib

  def _collect(self, wav, num_samples, events):
    del events
    if wav and num_samples > 0:
      self._chunks.append(ctypes.string_at(wav, 2 * num_samples))
    return 0  # Continue synthesis.

  def speak(self, request: dict) -> bytes:
    """-> native-endian int16 samples."""
    status = self.lib.espeak_SetVoiceByName(request["voice"].encode())
    if status != 0:
      raise ValueError(f"voice={request['voice']!r}: eSpeak cannot load it (error {status})")
    for param, key in ((_PARAM_RATE, "rate"), (_PARAM_PITCH, "pitch"), (_PARAM_RANGE, "range")):
      self.lib.espeak_SetParameter(param, int(request[key]), 0)
    self.lib.espeak_SetParameter(_PARAM_VOLUME, 100, 0)
    # The noise generator (breath, frication, Klatt voices) is otherwise seeded from the clock.
    self.lib.espeak_ng_SetRandSeed(int(request["seed"]))
    self._chunks = []
    text = request["text"].encode("utf-8") + b"\0"
    status = self.lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if status != 0:
      raise RuntimeError(f"espeak_Synth failed (error {status}) for text {request['text']!r}")
    self.lib.espeak_Synchronize()
    return b"".join(self._chunks)

  def respond(self, request: dict) -> bytes:
    try:
      pcm = self.speak(request)
      if sys.byteorder != "little":
        pcm = _swap16(pcm)
      return b"\0" + pcm
    except Exception as e:  # Sent back; the client raises it with the speaker and text named.
      return b"\1" + f"{type(e).__name__}: {e}".encode()


def _swap16(data: bytes) -> bytes:
  swapped = bytearray(len(data))
  swapped[0::2], swapped[1::2] = data[1::2], data[0::2]
  return bytes(swapped)


def _respond_in_fork(speaker: _Speaker, request: dict) -> bytes:
  read_fd, write_fd = os.pipe()
  pid = os.fork()
  if pid == 0:  # Child: speak once, send the response, leave without cleanup.
    code = 1
    try:
      os.close(read_fd)
      view = memoryview(speaker.respond(request))
      while view:
        view = view[os.write(write_fd, view):]
      code = 0
    finally:
      os._exit(code)
  os.close(write_fd)
  chunks = []
  with os.fdopen(read_fd, "rb") as pipe:
    while chunk := pipe.read(1 << 16):
      chunks.append(chunk)
  _, wait_status = os.waitpid(pid, 0)
  data = b"".join(chunks)
  if os.waitstatus_to_exitcode(wait_status) != 0 or not data:
    return b"\1" + f"the eSpeak child process died (wait status {wait_status})".encode()
  return data


def main(argv) -> int:
  stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
  try:
    speaker = _Speaker(argv[1], argv[2])
  except Exception as e:
    _write_message(stdout, b"ER" + f"{type(e).__name__}: {e}".encode())
    return 1
  _write_message(stdout, b"OK" + struct.pack("<I", speaker.rate))
  forking = hasattr(os, "fork")
  while True:
    message = _read_message(stdin)
    if not message:  # EOF (the client is gone) or an explicit exit request.
      return 0
    request = json.loads(message.decode("utf-8"))
    _write_message(stdout, _respond_in_fork(speaker, request) if forking else speaker.respond(request))


if __name__ == "__main__":
  sys.exit(main(sys.argv))
