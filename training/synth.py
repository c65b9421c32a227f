"""`speechadapt data synth`: synthetic English speech corpora with espeak-ng, flite, festival and Piper.

    speechadapt data synth --out DIR --voices en-us,en-gb --variants 4 --count 1000 --seed 0
    speechadapt data synth --out DIR --engines espeak,flite,festival,piper --voices en-us,flite:slt,piper:joe
    python -m speechadapt.training.synth --out DIR --sentences lines.txt --noise-snr 10:30 --reverb 0.3

Writes DIR/audio/NNN/NNNNNN.wav (16 kHz mono int16), DIR/manifest.jsonl
({"audio", "text", "speaker", "duration", "voice", "accent", "engine"} per line) and DIR/summary.json.
Engines and their voices: training/voices.py. Speakers are espeak-ng voice+variant pairs (`en-us+f3`) and
the other engines' voices (`flite-slt`); utterances are balanced over all speakers.
Text comes from a sentences file (normalised: numbers spelled out, lowercase, a-z ' only) or from a
generator (common English words plus templated sentences with names, numbers, dates and times).
Utterance i depends only on (seed, i): same config and seed -> byte-identical manifest and audio,
whatever --jobs is.

Speed (measured on an idle 2-core machine, --jobs 2, generated 3-10 word sentences, ~3 s of audio each):
about 57 utterances/s clean (~170x real time) and 46/s with --noise-snr 10:30 --reverb 0.5 --telephone 0.3
--speed-perturb 0.9,1.0,1.1; --jobs 1: about 32/s. Start-up (word list, workers) about 1 s.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from speechadapt.training import engine_plan
from speechadapt.training import text as textgen
from speechadapt.training import voices as V

RATE = 16000
AUDIO_DIR = "audio"
_WAV = re.compile(r"^\d{6,}\.wav$")
# Preferred order when `variants` is a number: natural-sounding first, novelty voices never.
_PREFERRED = ("m1", "f1", "m3", "f2", "m2", "f3", "m4", "f4", "m5", "f5", "m6", "m7", "m8")
_NOVELTY = re.compile(r"(?i)^(whisper.*|demonic|fast|announcer|unirobot|anikarobot|robosoft\d*|tweaky|croak)$")


@dataclass
class SynthConfig:
    """What to synthesise. Ranges are inclusive (lo, hi); augmentation is off by default."""

    out_dir: str | Path
    engines: list[str] = field(default_factory=lambda: ["espeak"])  # espeak, flite, festival, piper
    # espeak-ng names (en-us) and engine:voice (flite:slt); None, or no voice of an engine: that engine's defaults
    voices: list[str] | None = None
    # share of the utterances per engine ({"espeak": 0.5, "piper": 0.1}, normalised), split evenly over the
    # engine's speakers; None: every speaker the same share (see engine_plan.py)
    engine_weights: dict[str, float] | None = None
    variants: list[str] | int = 4  # espeak-ng: names ("none" = plain voice) or N per voice: plain + N-1 variants
    speed: tuple[int, int] = (140, 190)  # words per minute (other engines: rate relative to 175 wpm)
    pitch: tuple[int, int] = (30, 70)  # espeak-ng 0..99 (other engines: 50 = the voice's pitch, 10 = a semitone)
    sentences_file: str | Path | None = None  # one sentence per line, used in order (cycled); else generated
    vocab_size: int | None = None  # generator: closed vocabulary of the N most common words (no templates)
    template_ratio: float = 0.3  # generator: share of templated sentences (names, numbers, dates)
    count: int | None = None  # utterances (default: one per sentence of sentences_file, else 100)
    hours: float | None = None  # or: synthesise until this much audio
    words: tuple[int, int] = (3, 10)  # generator: words per sentence
    seed: int = 0
    jobs: int | None = None  # worker processes (default: os.cpu_count())
    noise_snr: tuple[float, float] | None = None  # white or pink noise at this SNR range (dB)
    noise_prob: float = 1.0  # share of utterances that get noise when noise_snr is set
    reverb: float = 0.0  # probability of a synthetic room impulse response (RT60 0.2-0.8 s)
    telephone: float = 0.0  # probability of an 8 kHz mu-law 300-3400 Hz channel
    speed_perturb: list[float] | None = None  # factors picked uniformly per utterance, e.g. [0.9, 1.0, 1.1]
    quiet: bool = False
    espeak: str = "espeak-ng"


@dataclass
class SynthSummary:
    out_dir: Path
    manifest: Path
    utterances: int
    hours: float
    speakers: list[str]
    voices: list[str]
    per_voice: dict[str, int]
    per_speaker: dict[str, int]
    seed: int
    word_source: str
    elapsed_s: float


@dataclass(frozen=True)
class _Job:
    """One utterance, fully decided by (seed, index)."""

    index: int
    text: str
    engine: str
    voice: str
    variant: str
    speed: int
    pitch: int
    lead_s: float
    tail_s: float
    factor: float
    rt60: float | None
    telephone: bool
    snr: float | None
    color: str
    seed: int

    @property
    def speaker(self) -> str:
        if self.engine != "espeak":
            return f"{self.engine}-{self.voice}"
        return self.voice if self.variant == "none" else f"{self.voice}+{self.variant}"

    @property
    def voice_id(self) -> str:
        """The voice as --voices names it."""
        return self.voice if self.engine == "espeak" else f"{self.engine}:{self.voice}"

    @property
    def path(self) -> str:
        return f"{AUDIO_DIR}/{self.index // 1000:03d}/{self.index:06d}.wav"


# -- espeak-ng (the engines live in voices.py)


def list_voices(espeak: str = "espeak-ng") -> list[str]:
    """English espeak-ng voices (languages en-*), MBROLA ones excluded (they need extra packages)."""
    return V.engine("espeak", espeak).voices()


def list_variants(espeak: str = "espeak-ng") -> list[str]:
    """espeak-ng voice variants (the `+name` in `-v en-us+f3`)."""
    return V.engine("espeak", espeak).variants()


# -- validation and planning


def _check_range(name: str, r, lo: float, hi: float, kind=float) -> tuple:
    try:
        a, b = (kind(v) for v in r)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, not {r!r}") from None
    if not lo <= a <= b <= hi:
        raise ValueError(f"{name} range {a}:{b} is invalid: need {lo} <= low <= high <= {hi}")
    return a, b


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} is a probability in [0, 1], not {p}")


def _writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"out_dir {out} cannot be created: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"out_dir {out} is not writable ({probe} denies write access)")


def resolve_variants(spec: list[str] | int, available: list[str]) -> list[str]:
    if isinstance(spec, int):
        pool = [v for v in _PREFERRED if v in available]
        pool += [v for v in available if v not in pool and not _NOVELTY.match(v)]
        if not 1 <= spec <= len(pool) + 1:
            raise ValueError(f"variants must be 1..{len(pool) + 1} (the plain voice + variants), not {spec}")
        return ["none", *pool[: spec - 1]]
    if not spec:
        raise ValueError("variants is empty: give names (e.g. none,f3,m1) or a number")
    lower = {v.lower(): v for v in available}
    out = []
    for v in spec:
        if v.lower() != "none" and v.lower() not in lower:
            raise ValueError(f"unknown espeak-ng variant {v!r}; valid: none, {', '.join(available)}")
        out.append("none" if v.lower() == "none" else lower[v.lower()])
    return list(dict.fromkeys(out))


@dataclass
class _Plan:
    cfg: SynthConfig
    speakers: list[tuple[str, str, str]]  # (engine, voice, variant)
    slots: list[int]  # engine_plan.schedule: speaker indices of a block, shuffled per block
    sentences: list[str] | None
    vocab: tuple[str, ...]
    word_source: str

    def job(self, i: int) -> _Job:
        c = self.cfg
        if self.sentences is not None:
            sentence = self.sentences[i % len(self.sentences)]
        else:
            ratio = 0.0 if c.vocab_size else c.template_ratio
            sentence = textgen.generate_sentence(np.random.default_rng([c.seed, i, 0]), self.vocab, c.words, ratio)
        n = len(self.slots)  # each block of n utterances holds the schedule's slots (every speaker once unweighted), shuffled
        slot = self.slots[int(np.random.default_rng([c.seed, i // n, 4]).permutation(n)[i % n])]
        engine, voice, variant = self.speakers[slot]
        r = np.random.default_rng([c.seed, i, 1])
        speed, pitch = int(r.integers(c.speed[0], c.speed[1] + 1)), int(r.integers(c.pitch[0], c.pitch[1] + 1))
        lead, tail = (round(float(v), 3) for v in r.uniform(0.1, 0.2, size=2))
        a = np.random.default_rng([c.seed, i, 2])  # augmentation: drawn in a fixed order, used or not
        factors = c.speed_perturb or [1.0]
        factor = float(factors[int(a.integers(len(factors)))])
        use_reverb, rt60 = a.random() < c.reverb, float(a.uniform(0.2, 0.8))
        use_tel = bool(a.random() < c.telephone)
        use_noise, snr = a.random() < c.noise_prob, float(a.uniform(*(c.noise_snr or (0.0, 0.0))))
        color = "pink" if a.random() < 0.5 else "white"
        return _Job(i, sentence, engine, voice, variant, speed, pitch, lead, tail, factor, rt60 if use_reverb else None,
                    use_tel, snr if c.noise_snr and use_noise else None, color, c.seed)


def _validate(cfg: SynthConfig) -> _Plan:
    """Every check that can fail, before any file is written."""
    import importlib.util

    if importlib.util.find_spec("soundfile") is None:
        raise ValueError("data synth needs soundfile: pip install soundfile")
    speakers = _speakers(cfg)
    slots = engine_plan.schedule(speakers, cfg.engine_weights)
    _check_range("speed", cfg.speed, 80, 450, int)
    _check_range("pitch", cfg.pitch, 0, 99, int)
    _check_range("words", cfg.words, 1, 100, int)
    if cfg.noise_snr is not None:
        _check_range("noise_snr", cfg.noise_snr, -10, 100)
    for name in ("noise_prob", "reverb", "telephone", "template_ratio"):
        _check_prob(name, getattr(cfg, name))
    if cfg.speed_perturb is not None and (not cfg.speed_perturb or any(not 0.5 <= f <= 2.0 for f in cfg.speed_perturb)):
        raise ValueError(f"speed_perturb factors must be in [0.5, 2.0], not {cfg.speed_perturb}")
    if cfg.count is not None and cfg.hours is not None:
        raise ValueError("give count or hours, not both")
    if cfg.count is not None and cfg.count < 1:
        raise ValueError(f"count must be at least 1, not {cfg.count}")
    if cfg.hours is not None and not cfg.hours > 0:
        raise ValueError(f"hours must be positive, not {cfg.hours}")
    if cfg.seed < 0:
        raise ValueError(f"seed must be >= 0, not {cfg.seed}")
    if cfg.jobs is not None and cfg.jobs < 1:
        raise ValueError(f"jobs must be at least 1, not {cfg.jobs}")
    sentences, vocab, source = None, (), ""
    if cfg.sentences_file is not None:
        if cfg.vocab_size is not None:
            raise ValueError("vocab_size applies to generated text, not to a sentences file")
        path = Path(cfg.sentences_file)
        if not path.is_file():
            raise ValueError(f"sentences file not found: {path}")
        sentences, source = textgen.read_sentences(path), str(path)
        if not sentences:
            raise ValueError(f"sentences file {path} has no text (empty after normalisation)")
    else:
        if cfg.vocab_size is not None and cfg.vocab_size < 1:
            raise ValueError(f"vocab_size must be at least 1, not {cfg.vocab_size}")
        vocab, source = textgen.load_vocabulary(cfg.vocab_size)
        if not vocab:
            raise ValueError("no English word list: apt-get install wamerican, or pip install wordfreq")
        if cfg.vocab_size and len(vocab) < cfg.vocab_size:
            raise ValueError(f"vocab_size {cfg.vocab_size} exceeds the {len(vocab)} words of {source}")
    _writable(Path(cfg.out_dir))
    return _Plan(cfg, speakers, slots, sentences, vocab, source)


def _engines(cfg: SynthConfig) -> dict[str, V.Engine]:
    """The engines asked for, checked to be installed (EngineMissing names the package)."""
    if not cfg.engines:
        raise ValueError(f"no engines given; valid: {', '.join(V.ENGINES)}")
    engines = {}
    for name in dict.fromkeys(cfg.engines):
        eng = V.engine(name, cfg.espeak)
        eng.check()
        engines[name] = eng
    return engines


def _speakers(cfg: SynthConfig) -> list[tuple[str, str, str]]:
    """(engine, voice, variant) for every speaker; voices named `engine:voice`, plain names are espeak-ng's."""
    engines = _engines(cfg)
    if cfg.voices is not None and not cfg.voices:
        raise ValueError("no voices given; see --list-voices")
    chosen: dict[str, list[str]] = {name: [] for name in engines}
    for v in cfg.voices or []:
        name, voice = v.split(":", 1) if ":" in v else ("espeak", v)
        if name not in V.ENGINES:
            raise ValueError(f"voice {v!r} names unknown engine {name!r}; valid: {', '.join(V.ENGINES)}")
        if name not in engines:
            raise ValueError(f"voice {v!r} is a {name} voice but {name} is not among the engines "
                             f"({', '.join(engines)}): add it to --engines")
        chosen[name].append(engines[name].resolve(voice))
    speakers = []
    for name, eng in engines.items():
        voices = list(dict.fromkeys(chosen[name])) or eng.default_voices()
        if not voices:
            raise V.EngineMissing(f"no {name} voice is installed: `{eng.install}`")
        if name == "espeak":
            variants = resolve_variants(cfg.variants, eng.variants())
            speakers += [(name, v, w) for v in voices for w in variants]
        else:
            speakers += [(name, v, "none") for v in voices]
    return speakers


# -- rendering (runs in worker processes)


def _render(job: _Job, out_dir: str, espeak: str) -> int:
    """Synthesise, resample, trim, augment and write one utterance; returns its length in samples."""
    import soundfile as sf

    from speechadapt.training import augment as aug

    eng = V.engine(job.engine, espeak)
    voice = job.speaker if job.engine == "espeak" else job.voice  # espeak-ng's -v syntax: voice[+variant]
    prosody = V.Prosody.from_espeak(job.speed, job.pitch)
    seed = int(np.random.default_rng([job.seed, job.index, 5]).integers(1 << 31))  # engines that sample (piper)
    try:
        x = V.render(eng, job.text, voice, prosody, seed)
    except RuntimeError as e:
        raise RuntimeError(f"utterance {job.index} ({job.speaker}): {e}") from None
    x = aug.trim_silence(x, RATE, job.lead_s, job.tail_s)
    rng = np.random.default_rng([job.seed, job.index, 3])
    x = aug.speed_perturb(x, RATE, job.factor)
    if job.rt60 is not None:
        x = aug.reverb(x, RATE, job.rt60, rng)
    if job.snr is not None:
        x = aug.add_noise(x, job.snr, job.color, rng)
    if job.telephone:
        x = aug.telephone(x, RATE)
    path = Path(out_dir) / job.path
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = aug.to_int16(x)
    sf.write(path, samples, RATE, subtype="PCM_16", format="WAV")
    return int(samples.size)


def _rendered(jobs, workers: int, out_dir: str, espeak: str):
    """Yield (job, samples) in index order; stops cleanly when the consumer stops."""
    if workers == 1:
        for job in jobs:
            yield job, _render(job, out_dir, espeak)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    pending: deque = deque()
    try:
        for job in itertools.islice(jobs, 4 * workers):
            pending.append((job, ex.submit(_render, job, out_dir, espeak)))
        while pending:
            job, fut = pending.popleft()
            n = fut.result()
            for nxt in itertools.islice(jobs, 1):
                pending.append((nxt, ex.submit(_render, nxt, out_dir, espeak)))
            yield job, n
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def synthesize(cfg: SynthConfig) -> SynthSummary:
    """Build the corpus described by cfg (ValueError, before any file is written, if cfg is invalid)."""
    start = time.monotonic()
    plan = _validate(cfg)
    out = Path(cfg.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. read-only or virtual file systems that access() does not catch
        raise ValueError(f"out_dir {out} is not writable: {e.strerror}") from None
    count = cfg.count
    if count is None and not cfg.hours:
        count = len(plan.sentences) if plan.sentences is not None else 100
    target_s = None if count else cfg.hours * 3600
    jobs = (plan.job(i) for i in (range(count) if count else itertools.count()))
    workers = min(cfg.jobs or os.cpu_count() or 1, count or 1 << 30)

    from tqdm import tqdm

    bar = tqdm(total=count or round(target_s), unit="utt", file=sys.stderr, desc="synth",
               disable=cfg.quiet or not sys.stderr.isatty(),
               bar_format=None if count else "{l_bar}{bar}| {n:.0f}/{total} s of audio [{elapsed}<{remaining}]")
    lines, seconds = [], 0.0
    per_voice, per_speaker, per_engine = Counter(), Counter(), Counter()
    with bar:
        for job, n in _rendered(jobs, workers, str(out), cfg.espeak):
            lines.append(json.dumps({"audio": job.path, "text": job.text, "speaker": job.speaker,
                                     "duration": n / RATE, "voice": job.voice_id,
                                     "accent": V.engine(job.engine, cfg.espeak).accent(job.voice),
                                     "engine": job.engine}))
            seconds += n / RATE
            per_voice[job.voice_id] += 1
            per_speaker[job.speaker] += 1
            per_engine[job.engine] += n / RATE
            bar.update(1 if count else min(n / RATE, target_s - bar.n))
            if target_s is not None and seconds >= target_s:
                break
    _remove_stale(out, {json.loads(line)["audio"] for line in lines})
    manifest = out / "manifest.jsonl"
    _write_atomic(manifest, "".join(line + "\n" for line in lines))
    summary = SynthSummary(out, manifest, len(lines), seconds / 3600, sorted(per_speaker), sorted(per_voice),
                           dict(sorted(per_voice.items())), dict(sorted(per_speaker.items())), cfg.seed,
                           plan.word_source, time.monotonic() - start)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}
    engines = {name: V.engine(name, cfg.espeak).version() for name in dict.fromkeys(cfg.engines)}
    versions = {"espeak_ng": engines["espeak"]} if "espeak" in engines else {}
    _write_atomic(out / "summary.json", json.dumps({
        "utterances": summary.utterances, "hours": summary.hours, "seconds": seconds,
        "speakers": summary.speakers, "voices": summary.voices, "per_voice": summary.per_voice,
        "per_speaker": summary.per_speaker,
        "per_engine_hours": {e: round(per_engine[e] / 3600, 4) for e in dict.fromkeys(cfg.engines)},
        "seed": cfg.seed, "word_source": plan.word_source,
        **versions, "engines": engines, "config": config}, indent=2) + "\n")
    return summary


def _write_atomic(path: Path, content: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(content)
    os.replace(tmp, path)


def _remove_stale(out: Path, keep: set[str]) -> None:
    """Delete audio this run did not list (an earlier, larger corpus; --hours overshoot)."""
    root = out / AUDIO_DIR
    if not root.is_dir():
        return
    for wav in sorted(root.glob("*/*.wav")):
        rel = wav.relative_to(out).as_posix()
        if _WAV.match(wav.name) and rel not in keep:
            wav.unlink()
    for d in root.iterdir():
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


# -- command line


def _pair(kind):
    def parse(text: str) -> tuple:
        parts = text.split(":")
        if len(parts) not in (1, 2):
            raise argparse.ArgumentTypeError(f"expected LOW:HIGH, not {text!r}")
        try:
            lo, hi = kind(parts[0]), kind(parts[-1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LOW:HIGH numbers, not {text!r}") from None
        return lo, hi

    return parse


def _variants(text: str) -> list[str] | int:
    return int(text) if text.strip().isdigit() else [v.strip() for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, not {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Fill the `data synth` (sub)parser."""
    d = SynthConfig(out_dir="")
    p.add_argument("--out", metavar="DIR", help="output folder (manifest.jsonl, summary.json, audio/)")
    p.add_argument("--engines", default=",".join(d.engines),
                   help=f"speech engines, comma-separated: {','.join(V.ENGINES)} (default: {','.join(d.engines)})")
    p.add_argument("--engine-weights", metavar="E=W,...",
                   help="share of the utterances per engine, e.g. espeak=0.5,flite=0.2,festival=0.2,piper=0.1 "
                        "(split evenly over each engine's speakers; default: every speaker the same share)")
    p.add_argument("--voices", help="voices, comma-separated: espeak-ng names (en-us) and engine:voice (flite:slt); "
                                    "an engine with none listed gets its defaults (espeak: en-us,en-gb; see --list-voices)")
    p.add_argument("--variants", type=_variants, default=d.variants, metavar="N|V,V,...",
                   help=f"N per voice (plain + N-1 variants) or names like none,f3,m1 (default: {d.variants})")
    p.add_argument("--speed", type=_pair(int), default=d.speed, metavar="LO:HI",
                   help="words per minute (default: 140:190)")
    p.add_argument("--pitch", type=_pair(int), default=d.pitch, metavar="LO:HI", help="pitch 0-99 (default: 30:70)")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--sentences", metavar="FILE", help="one sentence per line (default: generated text)")
    text.add_argument("--vocab-size", type=int, metavar="N", help="generated text from the N most common words only")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--count", type=int, metavar="N",
                      help="number of utterances (default: one per line of --sentences, else 100)")
    size.add_argument("--hours", type=float, metavar="H", help="or: hours of audio")
    p.add_argument("--words", type=_pair(int), default=d.words, metavar="LO:HI",
                   help="words per generated sentence (default: 3:10)")
    p.add_argument("--template-ratio", type=float, default=d.template_ratio, metavar="P",
                   help=f"share of templated sentences with numbers, dates, names (default: {d.template_ratio})")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (default: 0)")
    p.add_argument("--jobs", type=int, metavar="N", help="worker processes (default: all cores)")
    p.add_argument("--noise-snr", type=_pair(float), metavar="LO:HI", help="add white/pink noise at this SNR in dB")
    p.add_argument("--noise-prob", type=float, default=d.noise_prob, metavar="P",
                   help="share of noisy utterances (default: 1)")
    p.add_argument("--reverb", type=float, default=d.reverb, metavar="P", help="probability of synthetic room reverb")
    p.add_argument("--telephone", type=float, default=d.telephone, metavar="P",
                   help="probability of a telephone channel")
    p.add_argument("--speed-perturb", type=_floats, metavar="F,F,...", help="speed factors, e.g. 0.9,1.0,1.1")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--list-voices", action="store_true", help="print the English voices and the variants, then exit")
    p.add_argument("--plan", action="store_true",
                   help="print the hours per engine (and the estimated synthesis time), then exit")


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    if not args.out:
        raise ValueError("--out DIR is required")
    voices = None if args.voices is None else [v.strip() for v in args.voices.split(",") if v.strip()]
    weights = None if args.engine_weights is None else engine_plan.parse_weights(args.engine_weights)
    return SynthConfig(out_dir=Path(args.out), engines=[e.strip() for e in args.engines.split(",") if e.strip()],
                       voices=voices, engine_weights=weights,
                       variants=args.variants, speed=args.speed, pitch=args.pitch, sentences_file=args.sentences,
                       vocab_size=args.vocab_size, template_ratio=args.template_ratio, count=args.count,
                       hours=args.hours, words=args.words, seed=args.seed, jobs=args.jobs, noise_snr=args.noise_snr,
                       noise_prob=args.noise_prob, reverb=args.reverb, telephone=args.telephone,
                       speed_perturb=args.speed_perturb, quiet=args.quiet)


def run(args: argparse.Namespace) -> int:
    """Run `data synth`; 0 ok, 1 synthesis failed, 2 bad input."""
    try:
        if args.list_voices:
            _print_voices()
            return 0
        cfg = config_from_args(args)
        if args.plan:
            print(plan_text(cfg))
            return 0
        summary = synthesize(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {summary.utterances} utterances ({summary.hours * 60:.1f} min, {len(summary.speakers)} speakers) "
          f"to {summary.manifest} in {summary.elapsed_s:.1f} s")
    return 0


PLAN_SECONDS_PER_UTTERANCE = 2.8  # --plan with --count: natural `data text` sentences, about 2.8 s spoken


def plan_text(cfg: SynthConfig) -> str:
    """What `synthesize(cfg)` would make: hours and speakers per engine, estimated synthesis time."""
    speakers = _speakers(cfg)
    if cfg.hours is not None:
        hours, basis = cfg.hours, f"{cfg.hours:g} h asked"
    else:
        count = cfg.count or 100
        hours, basis = count * PLAN_SECONDS_PER_UTTERANCE / 3600, \
            f"{count} utterances at ~{PLAN_SECONDS_PER_UTTERANCE} s each"
    jobs = cfg.jobs or os.cpu_count() or 1
    rows = engine_plan.plan(speakers, cfg.engine_weights, hours)
    return f"plan for {cfg.out_dir} ({basis}, {len(speakers)} speakers):\n" + engine_plan.format_plan(rows, jobs)


def _print_voices() -> None:
    for name in V.ENGINES:
        eng = V.engine(name)
        try:
            eng.check()
        except V.EngineMissing as e:
            print(f"{name}: not installed ({e})")
            continue
        default = eng.default_voices()
        print(f"{name} {eng.version()}: " + " ".join(
            (v if name == "espeak" else f"{name}:{v}") + ("*" if v in default else "") for v in eng.voices()))
        if name == "espeak":
            print("espeak variants:", "none", " ".join(eng.variants()))
    print("(* = used when --voices names none of that engine's voices)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m speechadapt.training.synth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
