"""Audio files to the wire: decode with soundfile, cut into LINEAR16 chunks, pace in real time.

The client sends audio at its own sample rate and channel count; the server
resamples and downmixes. Only numpy and soundfile are needed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from speechadapt.client.types import MAX_CHANNELS, MAX_RATE, MIN_RATE

_INT16_SUBTYPES = {"PCM_16", "PCM_S8", "PCM_U8"}  # decoded to int16 exactly by libsndfile


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode any file soundfile reads to int16: shape (n,) for mono, (n, channels) otherwise.

    Returns (samples, sample_rate). Float and 24/32-bit sources are clipped to
    full scale. Raises FileNotFoundError for a missing file and ValueError for
    one that is not audio, is empty, or has a rate or channel count the server
    does not accept.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"audio file not found: {p}")
    if not p.is_file():
        raise ValueError(f"{p} is not a file; give an audio file (WAV, FLAC, OGG, ...)")
    try:
        with sf.SoundFile(p) as f:
            rate, channels, subtype = f.samplerate, f.channels, f.subtype
            if subtype in _INT16_SUBTYPES:
                samples = f.read(dtype="int16", always_2d=False)
            else:
                x = f.read(dtype="float32", always_2d=False)
                samples = np.round(np.clip(x, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    except sf.SoundFileRuntimeError as e:
        raise ValueError(f"cannot decode audio file {p}: {e}; convert it to WAV or FLAC "
                         f"(e.g. ffmpeg -i {p.name} -ar 16000 out.wav)") from None
    if rate > MAX_RATE or rate < MIN_RATE:
        raise ValueError(f"{p} is sampled at {rate} Hz; the server accepts {MIN_RATE}..{MAX_RATE} Hz, "
                         f"resample it first (e.g. ffmpeg -i {p.name} -ar 16000 out.wav)")
    if channels > MAX_CHANNELS:
        raise ValueError(f"{p} has {channels} channels; the server accepts at most {MAX_CHANNELS}, downmix it first")
    if len(samples) == 0:
        raise ValueError(f"{p} holds no audio samples")
    return samples, rate


def pcm_chunks(samples: np.ndarray, sample_rate: int, chunk_ms: float = 100) -> Iterator[bytes]:
    """Cut int16 samples ((n,) or (n, channels)) into little-endian LINEAR16 chunks of `chunk_ms`.

    Multichannel frames stay interleaved; every chunk holds whole frames; the
    last one may be shorter.
    """
    samples = np.asarray(samples)
    if samples.dtype != np.int16:
        raise ValueError(f"samples must be int16 PCM, not {samples.dtype}; use read_audio() or "
                         "(np.clip(x, -1, 1) * 32767).astype(np.int16)")
    if samples.ndim not in (1, 2):
        raise ValueError(f"samples must have shape (n,) or (n, channels), not {samples.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, not {sample_rate}")
    if not chunk_ms > 0:
        raise ValueError(f"chunk_ms must be positive, not {chunk_ms}")
    frames = max(1, round(sample_rate * chunk_ms / 1000))
    wire = samples.astype("<i2", copy=False)
    for i in range(0, len(wire), frames):
        yield np.ascontiguousarray(wire[i:i + frames]).tobytes()


def paced(chunks: Iterable[bytes], bytes_per_second: float) -> Iterator[bytes]:
    """Yield chunks no faster than real time: each one when the audio before it has "played".

    The schedule is absolute (time.monotonic from the first chunk), so sleep
    overshoot does not accumulate into drift.
    """
    if bytes_per_second <= 0:
        raise ValueError(f"bytes_per_second must be positive, not {bytes_per_second}")
    t0, sent = time.monotonic(), 0
    for chunk in chunks:
        wait = t0 + sent / bytes_per_second - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        yield chunk
        sent += len(chunk)


async def apaced(chunks: Iterable[bytes] | AsyncIterable[bytes], bytes_per_second: float) -> AsyncIterator[bytes]:
    """`paced` for asyncio: the same drift-free schedule with asyncio.sleep."""
    if bytes_per_second <= 0:
        raise ValueError(f"bytes_per_second must be positive, not {bytes_per_second}")
    loop = asyncio.get_running_loop()
    t0, sent = loop.time(), 0
    async for chunk in aiter_chunks(chunks):
        wait = t0 + sent / bytes_per_second - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        yield chunk
        sent += len(chunk)


async def aiter_chunks(chunks: Iterable[bytes] | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Iterate a sync or async iterable of chunks asynchronously."""
    if isinstance(chunks, AsyncIterable):
        async for c in chunks:
            yield c
    else:
        for c in chunks:
            yield c


def bytes_per_second(sample_rate: int, channels: int) -> int:
    """LINEAR16 data rate: 2 bytes per sample per channel."""
    return 2 * sample_rate * max(1, channels)


__all__ = ["apaced", "bytes_per_second", "paced", "pcm_chunks", "read_audio"]
