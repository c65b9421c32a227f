"""How far a job's target domain is from the base model's source domain, measured before training.

Two views, both reported in the job's baseline events and report:

- the base model's WER on the target dev set against its WER on the source dev set (`ratio` = source WER /
  target WER clipped to [0, 1]: near 1, the target is no harder than the source; near 0, it is far harder);
- a feature-statistics distance: per-dimension Gaussians over the log-mel frames of the louder half of each
  utterance (the speech, not the silences around it), target train audio against the source dev audio,
  compared by the symmetric KL divergence averaged over the mel bands. It is read against the source's own
  spread: the same distance between two halves of the source dev set.

`warnings` say, in words a user acts on, when the data or the target dev set is too small or transfer is likely
to be negative.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SMALL_DATA_S = 60.0  # less target audio than this: a warning
# "far": a feature distance over FAR_FACTOR times the source's own spread and over FAR_MIN. Measured with an
# espeak-ng en-us source (spread 0.004): en-gb 0.045, LJ Speech 0.20, speechbrain samples 0.42, FSDD digits
# (8 kHz recordings) 1.8-3.5; its own audio through an 8 kHz channel 0.9. Synthetic sources are so uniform
# that the factor alone would call any accent far.
FAR_FACTOR = 10.0
FAR_MIN = 0.6
# fewer target dev words than this: a warning. The job keeps its best checkpoint and gates on the dev WER; on
# base-en's 5-minute transfer cell a 20-utterance (163-word) dev set read 18.4% for the default job where 60 other
# sentences of the same speakers read 29.1% (bench/results/transfer_gap.json).
SMALL_DEV_WORDS = 500
NOTHING_TO_GAIN_WER = 0.05  # base target WER at or below this: little left to gain
MAX_UTTERANCES = 200  # per side, spread over the manifest


@dataclass(frozen=True)
class Relatedness:
    base_target_wer: float
    base_source_wer: float
    ratio: float  # base source WER / base target WER, clipped to [0, 1]
    feature_distance: float  # target train against source dev (-1 when not measured)
    source_spread: float  # source dev half against half (-1 when not measured)
    target_seconds: float
    dev_words: int = 0  # words in the target dev transcripts (0: not counted)
    warnings: list[str] = field(default_factory=list)

    @property
    def far(self) -> bool:
        return self.feature_distance > max(FAR_FACTOR * self.source_spread, FAR_MIN)

    def to_dict(self) -> dict:
        return {**asdict(self), "far": self.far}

    def summary(self) -> str:
        s = (f"relatedness {self.ratio:.2f} (base WER target {self.base_target_wer:.1%}, source "
             f"{self.base_source_wer:.1%})")
        if self.feature_distance >= 0:
            s += (f"; feature distance target-source {self.feature_distance:.3f} (source against itself "
                  f"{self.source_spread:.3f})")
        return s


def wer_ratio(base_target_wer: float, base_source_wer: float) -> float:
    return 1.0 if base_target_wer <= 0 else min(1.0, max(0.0, base_source_wer / base_target_wer))


def _spread(items: list, k: int) -> list:
    if len(items) <= k:
        return list(items)
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


def speech_frames(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Log-mel frames (frames, 80) of the louder half of an utterance."""
    from speechadapt.asr.features import FeatureConfig, fbank

    feats = fbank(samples, FeatureConfig(sample_rate=sample_rate)).numpy()
    if len(feats) == 0:
        return feats
    energy = feats.mean(axis=1)
    return feats[energy >= np.median(energy)]


@dataclass
class FrameStats:
    """Running per-dimension mean and variance (float64 sums)."""

    n: int = 0
    s1: np.ndarray | None = None
    s2: np.ndarray | None = None

    def add(self, frames: np.ndarray) -> None:
        if len(frames) == 0:
            return
        f = frames.astype(np.float64)
        self.s1 = f.sum(0) if self.s1 is None else self.s1 + f.sum(0)
        self.s2 = (f * f).sum(0) if self.s2 is None else self.s2 + (f * f).sum(0)
        self.n += len(f)

    def __add__(self, other: "FrameStats") -> "FrameStats":
        if other.n == 0 or self.n == 0:
            return self if other.n == 0 else other
        return FrameStats(self.n + other.n, self.s1 + other.s1, self.s2 + other.s2)

    def gaussian(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError("too few speech frames to measure")
        mean = self.s1 / self.n
        return mean, np.maximum(self.s2 / self.n - mean * mean, 1e-4)


def symmetric_kl(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float:
    """Symmetric KL divergence between two diagonal Gaussians, averaged over dimensions (0 when equal)."""
    (ma, va), (mb, vb) = a, b
    d2 = (ma - mb) ** 2
    per_dim = 0.25 * (va / vb + vb / va - 2.0) + 0.25 * d2 * (1.0 / va + 1.0 / vb)
    return float(per_dim.mean())


def _paths(manifest: Path) -> list[Path]:
    from speechadapt.asr.manifest import read_manifest

    return [u.audio for u in read_manifest(manifest)]


def manifest_stats(paths: list[Path], sample_rate: int = 16000) -> FrameStats:
    from speechadapt.asr.audio import load_audio

    stats = FrameStats()
    for p in paths:
        stats.add(speech_frames(load_audio(p, sample_rate), sample_rate))
    return stats


def feature_distances(target_manifest: Path, source_manifest: Path,
                      max_utterances: int = MAX_UTTERANCES) -> tuple[float, float]:
    """(target against source, source half against half) symmetric KL of speech-frame statistics."""
    target = _spread(_paths(target_manifest), max_utterances)
    source = _spread(_paths(source_manifest), max_utterances)
    if len(source) < 2:
        raise ValueError("the source dev set needs at least 2 utterances")
    half_a, half_b = manifest_stats(source[0::2]), manifest_stats(source[1::2])
    whole = half_a + half_b  # the source's frames are read once
    return (symmetric_kl(manifest_stats(target).gaussian(), whole.gaussian()),
            symmetric_kl(half_a.gaussian(), half_b.gaussian()))


def warnings_for(r: Relatedness) -> list[str]:
    """What a user should know before the job trains (empty when nothing stands out)."""
    out = []
    if r.target_seconds < SMALL_DATA_S:
        out.append(f"little target data: {r.target_seconds:.0f} s of audio (under {SMALL_DATA_S:.0f} s). The job "
                   f"trains few parameters and stops early; a gain may hold only for these speakers and words. "
                   f"Several minutes of audio give a more general model.")
    if 0 < r.dev_words < SMALL_DEV_WORDS:
        p = min(max(r.base_target_wer, 0.05), 0.95)
        out.append(f"small target dev set: {r.dev_words} words. The job keeps the checkpoint with the best dev WER and "
                   f"the gate compares dev WERs; on {r.dev_words} words a WER of {p:.0%} moves by about "
                   f"{100 * math.sqrt(p * (1 - p) / r.dev_words):.1f} points by chance (one standard error, more when "
                   f"words of an utterance err together), and the chosen checkpoint reads better on it than on new "
                   f"speech. Give the dev set {SMALL_DEV_WORDS} words or more (about 50 sentences) of other "
                   f"utterances than the training ones.")
    if r.base_target_wer <= NOTHING_TO_GAIN_WER:
        out.append(f"little to gain: the base model already gets {r.base_target_wer:.1%} WER on the target dev set; "
                   f"an adaptation is promoted only if it does better there, so expect 'not promoted'.")
    elif r.base_target_wer <= r.base_source_wer:
        out.append(f"the target is no harder for the base model than its source domain (WER {r.base_target_wer:.1%} "
                   f"against {r.base_source_wer:.1%}): adapting risks forgetting for a small gain.")
    if r.far and r.base_target_wer >= 0.9:
        out.append(f"negative transfer likely: the target audio is far from the source domain (feature distance "
                   f"{r.feature_distance:.2f}, {r.feature_distance / max(r.source_spread, 1e-3):.0f} times the "
                   f"source's own spread) and the base model gets almost nothing right ({r.base_target_wer:.0%} WER). "
                   f"Expect a small gain at best: more target data, a `search:` over strategies, or a base model closer "
                   f"to the target may help.")
    elif r.far:
        out.append(f"the target audio is far from the source domain (feature distance {r.feature_distance:.2f}, "
                   f"{r.feature_distance / max(r.source_spread, 1e-3):.0f} times the source's own spread): "
                   f"which layers must adapt is not known in advance (a `search:` over strategies measures it), and "
                   f"forgetting is the risk to watch.")
    return out


def measure(base_target_wer: float, base_source_wer: float, target_train: Path, source_dev: Path,
            target_seconds: float, dev_words: int = 0) -> Relatedness:
    """Relatedness with its warnings; the feature distance is -1 when the audio cannot be measured."""
    try:
        dist, spread = feature_distances(target_train, source_dev)
    except (OSError, ValueError, RuntimeError):
        dist, spread = -1.0, -1.0
    r = Relatedness(base_target_wer, base_source_wer, wer_ratio(base_target_wer, base_source_wer),
                    round(dist, 4) if dist >= 0 else -1.0, round(spread, 4) if spread >= 0 else -1.0,
                    round(float(target_seconds), 1), int(dev_words))
    return Relatedness(**{**asdict(r), "warnings": warnings_for(r)})
