"""Turns request audio bytes (raw LINEAR16 or a WAV stream) into float32 mono samples."""

from __future__ import annotations

import struct

import numpy as np

from speechadapt.asr.audio import pcm16_to_float
from speechadapt.server.options import MAX_CHANNELS, MAX_RATE, MIN_RATE, InvalidRequest, RecognitionOptions
from speechadapt.v1 import recognizer_pb2 as pb

_MAX_HEADER = 1 << 16


class AudioInput:
    """Feed it audio chunks in order; `rate` and `channels` are known once the header (if any) is read."""

    def __init__(self, opts: RecognitionOptions):
        self.is_wav = opts.encoding == pb.WAV
        self.rate = opts.sample_rate
        self.channels = opts.channels
        self._expect_rate, self._expect_channels = opts.sample_rate, opts.channels
        self._header = bytearray()
        self._carry = b""  # WAV only: a partial sample frame left from the last chunk
        self.bytes_in = 0

    @property
    def ready(self) -> bool:
        return not self.is_wav or self._header is None

    def feed(self, data: bytes) -> np.ndarray:
        self.bytes_in += len(data)
        if self.is_wav and self._header is not None:
            self._header += data
            data = self._parse_header()
            if data is None:
                return np.zeros(0, dtype=np.float32)
        if self.is_wav:  # a container stream may be cut anywhere: carry partial frames over
            data = self._carry + data
            cut = len(data) - len(data) % (2 * self.channels)
            data, self._carry = data[:cut], data[cut:]
        try:
            return pcm16_to_float(data, self.channels)
        except ValueError as e:
            raise InvalidRequest(str(e)) from None

    def _parse_header(self) -> bytes | None:
        """Consume RIFF chunks up to 'data'; returns the PCM bytes after it, or None when more is needed."""
        h = bytes(self._header)
        if len(h) >= 12 and (h[:4] != b"RIFF" or h[8:12] != b"WAVE"):
            raise InvalidRequest("encoding WAV but the audio does not start with a RIFF/WAVE header")
        pos, fmt = 12, None
        while len(h) >= pos + 8:
            cid, size = h[pos : pos + 4], struct.unpack("<I", h[pos + 4 : pos + 8])[0]
            if cid == b"data":
                if fmt is None:
                    raise InvalidRequest("WAV 'data' chunk before its 'fmt ' chunk")
                self._header = None
                return h[pos + 8 :]
            if len(h) < pos + 8 + size:
                break
            if cid == b"fmt ":
                fmt = self._check_fmt(h[pos + 8 : pos + 8 + size])
            pos += 8 + size + (size & 1)
        if len(h) > _MAX_HEADER:
            raise InvalidRequest("WAV header too long or without a 'data' chunk")
        return None

    def _check_fmt(self, body: bytes) -> bool:
        if len(body) < 16:
            raise InvalidRequest("WAV 'fmt ' chunk too short")
        tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
        if tag not in (1, 0xFFFE) or bits != 16:
            raise InvalidRequest(f"WAV must hold 16-bit PCM (format {tag}, {bits} bits given); convert it or use FLAC with Recognize")
        if not MIN_RATE <= rate <= MAX_RATE:
            raise InvalidRequest(f"WAV sample rate {rate} is outside {MIN_RATE}..{MAX_RATE}")
        if not 1 <= channels <= MAX_CHANNELS:
            raise InvalidRequest(f"WAV has {channels} channels; at most {MAX_CHANNELS}")
        if self._expect_rate and self._expect_rate != rate:
            raise InvalidRequest(f"config.sample_rate_hertz {self._expect_rate} does not match the WAV header's {rate}; set 0 or {rate}")
        if self._expect_channels and self._expect_channels != channels:
            raise InvalidRequest(f"config.audio_channel_count {self._expect_channels} does not match the WAV header's {channels}")
        self.rate, self.channels = rate, channels
        return True
