"""Engine weights for `data synth`: how a corpus's utterances are shared between engines and their speakers.

Without weights every speaker gets the same share, so an engine's share is its number of speakers: with 20
espeak-ng speakers (2 voices x 10 variants) beside 4 flite, 3 festival and 1 Piper voice, Piper speaks 1/28.
`--engine-weights espeak=0.5,flite=0.2,festival=0.2,piper=0.1` gives each engine that share of the utterances
(about that share of the audio: every engine speaks the same text), split evenly over the engine's speakers.

The share is kept by a schedule: a block of slots in which each speaker appears in proportion to its weight
(the shortest block that holds the shares exactly, else largest remainders over 200 slots, every speaker at
least once); `synth` shuffles the block anew for every run of that many utterances,
so any stretch of a corpus keeps the proportions. Without weights the block is every speaker once, which is
how `synth` always balanced speakers (same corpora, byte for byte).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Synthesis cost per second of audio on one core of the 2-core machine, used only to estimate the time a plan
# takes: README "Voices" (bench/voices_wer.py, default prosody) x 1.4, the gap measured on a weighted 0.1 h
# corpus of the base-en recipe (speed perturbation, noise; 17.7 s with 2 workers against 12.5 s estimated).
SYNTH_RTF = {"espeak": 0.05, "flite": 0.055, "festival": 0.15, "piper": 0.36}
MAX_EXACT_BLOCK = 1000  # the shortest block up to this size that gives every share exactly
MIN_BLOCK = 200  # else this many slots, by largest remainders: enough for a 1% share to get two slots


def parse_weights(text: str) -> dict[str, float]:
    """`espeak=0.5,flite=0.2` -> {"espeak": 0.5, "flite": 0.2} (ValueError saying what to fix)."""
    weights: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"engine weight {part!r} must be ENGINE=WEIGHT, e.g. espeak=0.5")
        try:
            w = float(value)
        except ValueError:
            raise ValueError(f"engine weight {part!r}: {value!r} is not a number") from None
        if name in weights:
            raise ValueError(f"engine {name!r} is weighted twice")
        weights[name] = w
    if not weights:
        raise ValueError("engine weights are empty: give ENGINE=WEIGHT pairs, e.g. espeak=0.5,piper=0.1")
    return weights


def engine_shares(engines: list[str], weights: dict[str, float]) -> dict[str, float]:
    """Each engine's share of the utterances (sums to 1). Every engine in use needs a positive weight;
    weights of engines not in use are errors."""
    extra = sorted(set(weights) - set(engines))
    if extra:
        raise ValueError(f"engine weights name {', '.join(extra)}, not among the engines ({', '.join(engines)}): "
                         "add them to --engines or drop their weights")
    missing = [e for e in engines if e not in weights]
    if missing:
        raise ValueError(f"no weight for engine(s) {', '.join(missing)}: weight every engine in --engines")
    bad = [f"{e}={w}" for e, w in weights.items() if not (w > 0 and math.isfinite(w))]
    if bad:
        raise ValueError(f"engine weights must be positive numbers, not {', '.join(bad)} "
                         "(leave an engine out of --engines instead of weighting it 0)")
    total = sum(weights[e] for e in engines)
    return {e: weights[e] / total for e in engines}


def speaker_shares(speakers: list[tuple[str, str, str]], weights: dict[str, float] | None) -> list[float]:
    """Each speaker's share of the utterances: 1/n each without weights, else its engine's share split evenly."""
    if weights is None:
        return [1.0 / len(speakers)] * len(speakers)
    engines = list(dict.fromkeys(s[0] for s in speakers))
    shares = engine_shares(engines, weights)
    per_engine = {e: sum(1 for s in speakers if s[0] == e) for e in engines}
    return [shares[s[0]] / per_engine[s[0]] for s in speakers]


def schedule(speakers: list[tuple[str, str, str]], weights: dict[str, float] | None) -> list[int]:
    """Speaker indices, one per slot of a block: each speaker once without weights, else in proportion to its
    share: the shortest block (up to MAX_EXACT_BLOCK slots) where every share is a whole number of slots, else
    max(MIN_BLOCK, #speakers) slots by largest remainders, every speaker at least once."""
    n = len(speakers)
    if weights is None:
        return list(range(n))
    shares = speaker_shares(speakers, weights)
    for size in range(n, MAX_EXACT_BLOCK + 1):
        exact = [s * size for s in shares]
        if all(abs(x - round(x)) < 1e-6 and round(x) >= 1 for x in exact):
            return [k for k in range(n) for _ in range(round(exact[k]))]
    size = max(MIN_BLOCK, n)
    exact = [s * size for s in shares]
    counts = [max(1, math.floor(x)) for x in exact]
    by_remainder = sorted(range(n), key=lambda k: (-(exact[k] - math.floor(exact[k])), k))
    for k in by_remainder[: max(0, size - sum(counts))]:
        counts[k] += 1
    return [k for k in range(n) for _ in range(counts[k])]


@dataclass(frozen=True)
class EngineRow:
    engine: str
    speakers: int
    share: float  # of the utterances (the schedule's actual proportion)
    hours: float
    synth_minutes: float  # estimated on one core (SYNTH_RTF)


def plan(speakers: list[tuple[str, str, str]], weights: dict[str, float] | None, hours: float) -> list[EngineRow]:
    """Hours per engine for a corpus of `hours` (the schedule's proportions; audio length per utterance is
    about the same for every engine, since they speak the same text)."""
    slots = schedule(speakers, weights)
    rows = []
    for engine in dict.fromkeys(s[0] for s in speakers):
        share = sum(1 for k in slots if speakers[k][0] == engine) / len(slots)
        h = hours * share
        rows.append(EngineRow(engine, sum(1 for s in speakers if s[0] == engine), share, h,
                              h * 60 * SYNTH_RTF.get(engine, 0.3)))
    return rows


def format_plan(rows: list[EngineRow], jobs: int) -> str:
    lines = [f"{'engine':<10} {'speakers':>8} {'share':>7} {'hours':>7} {'synth min':>10}"]
    for r in rows:
        lines.append(f"{r.engine:<10} {r.speakers:>8} {100 * r.share:>6.1f}% {r.hours:>7.2f} "
                     f"{r.synth_minutes / max(jobs, 1):>10.1f}")
    total_h = sum(r.hours for r in rows)
    total_min = sum(r.synth_minutes for r in rows) / max(jobs, 1)
    lines.append(f"{'total':<10} {sum(r.speakers for r in rows):>8} {'100.0%':>7} {total_h:>7.2f} {total_min:>10.1f}")
    lines.append(f"(synth min: estimated for {jobs} worker(s) from each engine's measured real-time factor)")
    return "\n".join(lines)
