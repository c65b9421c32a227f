"""Audio I/O and conversion: decode files and PCM bytes, downmix, resample (whole or streaming)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

MIN_RATE = 8000
MAX_RATE = 48000


def load_audio(path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Read any soundfile-readable file as float32 mono at `sample_rate`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"cannot decode audio file {path}: {e}") from e
    return resample(downmix(data), rate, sample_rate)


class AudioTooLong(ValueError):
    """Audio that decodes to more samples than allowed (a small compressed file may hold hours of silence)."""


def decode_container(data: bytes, sample_rate: int | None = 16000,
                     max_samples: int | None = None) -> tuple[np.ndarray, int, int]:
    """Decode a WAV or FLAC file held in memory. Returns (mono float32 at `sample_rate`, or at the
    file's rate when None; the file's rate; its channel count). More than `max_samples` samples (frames x
    channels) raise AudioTooLong, having decoded no more than that (headers may lie about the length)."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels = f.samplerate, f.channels
            frames = -1 if max_samples is None else max_samples // channels + 1
            samples = f.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"cannot decode the audio container: {e}") from e
    if max_samples is not None and samples.size > max_samples:
        raise AudioTooLong(f"the audio decodes to more than {max_samples} samples ({channels} channel(s) at {rate} Hz: "
                           f"over {max_samples / channels / rate:.0f} s), the most one request may decode")
    return resample(downmix(samples), rate, sample_rate or rate), rate, samples.shape[1]


def pcm16_to_float(data: bytes, channels: int = 1) -> np.ndarray:
    """Little-endian signed 16-bit PCM (channels interleaved) -> float32 mono in [-1, 1)."""
    frame = 2 * channels
    if len(data) % frame:
        raise ValueError(
            f"LINEAR16 audio must be whole 16-bit samples for {channels} channel(s): got {len(data)} bytes, "
            f"not a multiple of {frame}; send complete frames in each chunk"
        )
    x = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return downmix(x.reshape(-1, channels))


def downmix(samples: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32 by averaging channels."""
    if samples.ndim == 1:
        return samples.astype(np.float32, copy=False)
    return samples.mean(axis=1, dtype=np.float32) if samples.shape[1] > 1 else samples[:, 0].astype(np.float32)


def resample(samples: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Resample a whole float32 signal (band-limited sinc, torchaudio)."""
    if orig == new or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    return AF.resample(torch.from_numpy(np.ascontiguousarray(samples)), orig, new).numpy()


class StreamingResampler:
    """Resample a signal that arrives in pieces, giving the same samples as `resample` on the whole.

    It works in blocks of `orig/gcd` input samples and keeps enough context on both sides
    for torchaudio's sinc kernel, so it holds back at most a few ms of audio until `flush`.
    """

    def __init__(self, orig: int, new: int):
        self.orig, self.new = orig, new
        g = math.gcd(orig, new)
        self._o, self._n = orig // g, new // g
        base = min(self._o, self._n) * 0.99  # torchaudio's default rolloff
        width = math.ceil(6 * self._o / base)  # torchaudio's default lowpass_filter_width = 6
        self._ctx = math.ceil((width + self._o) / self._o) * self._o  # context, whole blocks
        self._buf = np.zeros(self._ctx, dtype=np.float32)  # zero history = torchaudio's edge padding
        self._seen = 0  # input samples received
        self._emitted = 0  # output samples produced

    def process(self, x: np.ndarray) -> np.ndarray:
        if self.orig == self.new:
            return x
        self._seen += len(x)
        self._buf = np.concatenate([self._buf, x.astype(np.float32, copy=False)])
        blocks = (len(self._buf) - 2 * self._ctx) // self._o
        if blocks <= 0:
            return np.zeros(0, dtype=np.float32)
        end = self._ctx + blocks * self._o
        out = self._run(self._buf[: end + self._ctx], blocks)
        self._buf = self._buf[end - self._ctx :]
        return out

    def flush(self) -> np.ndarray:
        """The rest of the signal; the resampler is spent afterwards."""
        if self.orig == self.new:
            return np.zeros(0, dtype=np.float32)
        total = math.ceil(self.new * self._seen / self.orig)
        remaining = len(self._buf) - self._ctx
        blocks = math.ceil(remaining / self._o)
        pad = blocks * self._o + 2 * self._ctx - len(self._buf)
        buf = np.concatenate([self._buf, np.zeros(pad, dtype=np.float32)])
        before = self._emitted
        out = self._run(buf, blocks) if blocks > 0 else np.zeros(0, dtype=np.float32)
        out = out[: max(0, total - before)]
        self._emitted = before + len(out)
        self._buf = np.zeros(self._ctx, dtype=np.float32)
        return out

    def _run(self, segment: np.ndarray, blocks: int) -> np.ndarray:
        y = AF.resample(torch.from_numpy(segment), self.orig, self.new).numpy()
        start = (self._ctx // self._o) * self._n
        out = y[start : start + blocks * self._n]
        self._emitted += len(out)
        return out
