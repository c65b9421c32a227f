"""Audio helpers for synthetic corpora: resampling, silence trimming and augmentation.

Signals are float32 numpy arrays in [-1, 1]. Numpy only (FFT-domain resampling and filtering of whole
utterances): deterministic, and worker processes start without importing torch.
"""

from __future__ import annotations

import functools
import math

import numpy as np


@functools.lru_cache(maxsize=4096)
def fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c 7^d 11^e >= n (a length numpy's FFT handles quickly)."""
    best, p11 = 1 << max(n - 1, 0).bit_length(), 1
    while p11 < best:
        p7 = p11
        while p7 < best:
            p5 = p7
            while p5 < best:
                p3 = p5
                while p3 < best:
                    v = p3 << max(-(-n // p3) - 1, 0).bit_length()  # times the power of 2 reaching n
                    best = min(best, v)
                    p3 *= 3
                p5 *= 5
            p7 *= 7
        p11 *= 11
    return best


def resample(x: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited resampling in the FFT domain (zero-padded to a fast length; the top 5% of the shared
    band rolled off). Returns round(len(x) * new / orig) samples."""
    g = math.gcd(orig, new)
    up, down = new // g, orig // g
    size = round(x.size * up / down)
    if up == down or x.size == 0:
        return x.astype(np.float32)
    m = fast_len(-(-x.size // down))
    n_in, n_out = down * m, up * m
    spec = np.fft.rfft(x.astype(np.float64), n_in)
    keep = min(spec.size, n_out // 2 + 1)
    out = np.zeros(n_out // 2 + 1, dtype=complex)
    out[:keep] = spec[:keep]
    ramp = max(keep // 20, 1)
    out[keep - ramp:keep] *= 0.5 + 0.5 * np.cos(np.linspace(0, np.pi, ramp))
    return (np.fft.irfft(out, n_out)[:size] * (n_out / n_in)).astype(np.float32)


def _fit(x: np.ndarray, size: int) -> np.ndarray:
    return x[:size] if x.size >= size else np.concatenate([x, np.zeros(size - x.size, x.dtype)])


def _band_pass(x: np.ndarray, rate: int, low: float, high: float, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth-magnitude band-pass, applied in the FFT domain."""
    n = fast_len(x.size)
    f = np.fft.rfftfreq(n, 1 / rate)
    f[0] = 1e-6
    gain = 1 / np.sqrt((1 + (f / high) ** (2 * order)) * (1 + (low / f) ** (2 * order)))
    return np.fft.irfft(np.fft.rfft(x.astype(np.float64), n) * gain, n)[: x.size].astype(np.float32)


def trim_silence(x: np.ndarray, rate: int, lead_s: float = 0.15, tail_s: float = 0.15,
                 threshold_db: float = -45.0) -> np.ndarray:
    """Keep exactly lead_s / tail_s of (original or zero-padded) context around the speech.

    Speech is where |x| exceeds threshold_db relative to the peak.
    """
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        return x
    loud = np.flatnonzero(np.abs(x) > peak * 10 ** (threshold_db / 20))
    start, end = int(loud[0]) - round(lead_s * rate), int(loud[-1]) + 1 + round(tail_s * rate)
    out = x[max(start, 0):min(end, x.size)]
    return np.concatenate([np.zeros(max(-start, 0), x.dtype), out, np.zeros(max(end - x.size, 0), x.dtype)])


def speed_perturb(x: np.ndarray, rate: int, factor: float) -> np.ndarray:
    """Kaldi/sox-style speed change (tempo and pitch) by resampling: factor 1.1 is 10% faster."""
    if factor == 1.0:
        return x
    return resample(x, round(rate * factor), rate)


def reverb(x: np.ndarray, rate: int, rt60: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a synthetic room impulse response (direct path + exponentially decaying noise).

    Keeps the length and the RMS level of the input.
    """
    n = max(int(rt60 * rate), 1)
    t = np.arange(n) / rate
    ir = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # -60 dB at rt60
    ir[: int(0.0025 * rate)] = 0.0  # gap before the first reflections
    ir *= 0.5 / np.sqrt(np.sum(ir**2))
    ir[0] = 1.0
    size = fast_len(x.size + n)
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: x.size]
    rms_in, rms_out = np.sqrt(np.mean(x**2)), np.sqrt(np.mean(y**2))
    return (y * (rms_in / rms_out if rms_out > 0 else 1.0)).astype(np.float32)


def telephone(x: np.ndarray, rate: int) -> np.ndarray:
    """Narrowband channel: band-pass 300-3400 Hz, 8 kHz 8-bit mu-law (G.711), back to `rate` (same length)."""
    y = np.clip(_band_pass(resample(x, rate, 8000), 8000, 300.0, 3400.0), -1, 1)
    mu = 255.0
    code = np.round((np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu) + 1) / 2 * mu)  # 0..255
    y = (code / mu) * 2 - 1
    y = np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu
    return _fit(resample(_band_pass(y, 8000, 300.0, 3400.0), 8000, rate), x.size)


def add_noise(x: np.ndarray, snr_db: float, color: str, rng: np.random.Generator) -> np.ndarray:
    """Add white or pink (1/f) noise at snr_db relative to the speech power (frames within 30 dB of the loudest)."""
    noise = rng.standard_normal(x.size)
    if color == "pink":
        n = fast_len(x.size)
        spec = np.fft.rfft(noise, n)
        f = np.arange(spec.size, dtype=np.float64)
        f[0] = 1.0
        noise = np.fft.irfft(spec / np.sqrt(f), n)[: x.size]
    frames = x[: x.size // 160 * 160].reshape(-1, 160)
    power = np.mean(frames**2, axis=1) if frames.size else np.array([np.mean(x**2)])
    speech_power = float(np.mean(power[power >= power.max() * 1e-3])) if power.max() > 0 else 1e-8
    noise *= np.sqrt(speech_power / 10 ** (snr_db / 10) / np.mean(noise**2))
    return (x + noise).astype(np.float32)


def to_int16(x: np.ndarray) -> np.ndarray:
    """Float -> int16, scaled down only if it would clip."""
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 0.99:
        x = x * (0.99 / peak)
    return np.clip(np.round(x * 32767.0), -32768, 32767).astype(np.int16)
