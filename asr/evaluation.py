"""Word and character error rates of a model on a manifest."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jiwer

from speechadapt.asr.audio import load_audio
from speechadapt.asr.inference import AsrModel
from speechadapt.asr.manifest import read_manifest
from speechadapt.asr.text import normalize_text


@dataclass(frozen=True)
class EvalResult:
    wer: float
    cer: float
    utterances: int
    audio_seconds: float
    rtf: float  # processing time / audio time

    def as_dict(self) -> dict:
        return asdict(self)


def error_rates(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    """(WER, CER) over a corpus; texts are normalised first. Empty references count their hypothesis words as insertions."""
    refs = [normalize_text(r) for r in refs]
    hyps = [normalize_text(h) for h in hyps]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    if not pairs:
        raise ValueError("no non-empty reference transcripts to score against")
    r, h = zip(*pairs)
    return jiwer.wer(list(r), list(h)), jiwer.cer(list(r), list(h))


def evaluate(model: AsrModel, manifest: str | Path) -> EvalResult:
    utts = read_manifest(manifest)
    hyps, audio_s, busy = [], 0.0, 0.0
    for u in utts:
        samples = load_audio(u.audio, model.sample_rate)
        audio_s += len(samples) / model.sample_rate
        t0 = time.perf_counter()
        hyps.append(model.transcribe(samples).text)
        busy += time.perf_counter() - t0
    wer, cer = error_rates([u.text for u in utts], hyps)
    return EvalResult(wer, cer, len(utts), audio_s, busy / audio_s if audio_s else 0.0)
