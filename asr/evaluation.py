"""Word and character error rates of a model on a manifest."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import jiwer

from speechadapt.asr.audio import load_audio
from speechadapt.asr.decoding import greedy_decode
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
    greedy_wer: float | None = None  # the same logits decoded greedily (asked for with greedy=True)

    def as_dict(self) -> dict:
        d = asdict(self)
        if d["greedy_wer"] is None:
            del d["greedy_wer"]
        return d


def error_rates(refs: list[str], hyps: list[str]) -> tuple[float, float]:
    """(WER, CER) over a corpus; texts are normalised first. Empty references count their hypothesis words as insertions."""
    refs = [normalize_text(r) for r in refs]
    hyps = [normalize_text(h) for h in hyps]
    pairs = [(r, h) for r, h in zip(refs, hyps) if r]
    if not pairs:
        raise ValueError("no non-empty reference transcripts to score against")
    r, h = zip(*pairs)
    return jiwer.wer(list(r), list(h)), jiwer.cer(list(r), list(h))


def evaluate(model: AsrModel, manifest: str | Path, greedy: bool = False) -> EvalResult:
    """With the model's own decoder (beam search over its lexicon when it has one); `greedy` adds the
    greedy WER of the same logits, to see what the decoder adds."""
    utts = read_manifest(manifest)
    hyps, plain, audio_s, busy = [], [], 0.0, 0.0
    for u in utts:
        samples = load_audio(u.audio, model.sample_rate)
        audio_s += len(samples) / model.sample_rate
        t0 = time.perf_counter()
        if not hasattr(model, "logits"):  # an encoder-decoder model: its own decoder, no greedy CTC to compare
            hyps.append(model.transcribe(samples).text)
            busy += time.perf_counter() - t0
            continue
        logits = model.logits(samples)
        hyps.append(model.decode(logits)[0].text)
        busy += time.perf_counter() - t0
        if greedy:
            plain.append(greedy_decode(logits, model.tokenizer, model.frame_seconds).text)
    refs = [u.text for u in utts]
    wer, cer = error_rates(refs, hyps)
    greedy_wer = error_rates(refs, plain)[0] if greedy and plain else None
    return EvalResult(wer, cer, len(utts), audio_s, busy / audio_s if audio_s else 0.0, greedy_wer)
