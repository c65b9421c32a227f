#!/usr/bin/env python
"""The transfer curve: target-accent WER after adapting a base model on 1, 2, 5 and 10 minutes of target audio,
for every adaptation strategy and for the same architecture trained from scratch, plus source WER (forgetting).

    python bench/transfer_curve.py [--model base-en] [--sizes 1,2,5,10] [--strategies head,finetune,adapters]
        [--minutes-per-run 3] [--target-accent en-gb-scotland] [--source-replay 0.5] [--no-default] [--quick]
    python bench/transfer_curve.py --model whisper-tiny-en     # the default model: see "Whisper" below

Beside the strategies, every size has a `default` row: the adaptation job with the four required keys only
(name, base_model, train_manifest, dev_manifest), i.e. what a user gets: strategy and source replay `auto`
(training/adapt.py choose_defaults), the job's own max_epochs 30 / max_minutes 10, its own source dev set.
Its budget is the job's, not --minutes-per-run, so it is reported beside the strategies, not among them in
the targets.

Whisper (--model whisper-tiny-en, or any model whose name or card says whisper; built from the bundled
weights when missing): Whisper is open-vocabulary, so the sets are ordinary English from `speechadapt data
text` (training/corpus_text.py, 4-16 words: its train split for the target pool, dev and source dev sets, its
test split for both test sets), scored with the served Whisper decoding (CTranslate2, the card's decoding)
on normalised text (numbers spelled out). Target accent en-gb-scotland as for base-en (the two curves compare):
on 16 test-split sentences x 4 unseen speakers the base reads en-us at 27.9% WER, en-gb-scotland at 46.8%
(en-029 34.2%, en-gb-x-gbclan 33.3%, en-us-nyc 36.9%, en-gb-x-gbcwmd 54.1%), so it is clearly worse there.
No scratch rows (see WHISPER_NO_SCRATCH) and no FSDD row (bench/speaker_adapt.py covers real speakers).
Budgets use STEP_SECONDS_WHISPER (bench/whisper_step_time.py: head 3.6 s, adapters 4.4 s, finetune 42 s a
step), so the default Whisper run is 1, 5, 10 min x (head, adapters, default) with 2 min per run, 0.25 source
replay (the job's own for Whisper), 60 + 60 test utterances: 76 minutes on the 2-core machine (measured).

A base trained on `speechadapt data text` (its card names the sentences file, as base-en's does) gets the same
ordinary-English sets as Whisper (4-16 words; the test split never reached its training text), so the two
curves share their sentences.

Data (synthesised with espeak-ng: for a base with a closed vocabulary, generated in that vocabulary; sentence
lengths, speed and pitch read from its training corpus summary or model card; cached in --workdir under a hash
of their recipe):

* target pool: --target-accent spoken by the speaker variants the base model heard on its source voices
  (none, m1, f1, ...), `max(sizes)` minutes; the train set of size N is the longest prefix of the pool with at
  most N minutes of audio, so the sets are nested (1 min c 2 c 5 c 10).
* target dev: the same speakers, other sentences (--dev-utterances, shared by every run): what each job picks
  its best checkpoint on and gates on; not counted in the N minutes. A source dev set of the same size (source
  voices, the base's speakers) is the jobs' `source_dev_manifest` (their gate), so that a job's own evaluations
  stay short.
* target test: the target accent spoken by speaker variants the base never heard (f5, m6, m7, m8), other
  sentences (--test-utterances).
* source test: the base model's source voices (en-us, en-gb) spoken by the same unseen variants
  (--source-test-utterances): forgetting. Test sentences are never training transcripts of the base, of the
  target pool or of the dev set.

Runs (one after another, each on 1 Ray Train worker with --cpus-per-worker CPUs, on a Ray head this script starts
on 127.0.0.1 with a private temp dir and shuts down at the end, or on --ray-address):

The budget of a run is --minutes-per-run of training on the project's 2-core machine, as a step budget: the
steps that take that long at the per-step times measured there (STEP_SECONDS, x TRAIN_SHARE for dev evaluations
and checkpoints), so runs compare the same amount of work whatever the machine's load; a wall-clock cap of
--time-cap x --minutes-per-run stops a run on a much slower machine.

* each strategy: the adaptation job itself, `python -m speechadapt.training.adapt --spec SPEC --store STORE
  --run-dir RUN --ray-address ADDR`, with a private store holding a copy of the base model; spec: max_epochs
  sized to the step budget (the job's warmup + cosine schedule spans it), max_minutes the cap, batch 16, augment
  on (SpecAugment, 0.9/1.1 speed perturbation), the strategy's default learning rate, --source-replay,
  max_source_regression 0.01.
* scratch: the pretraining job, `python -m speechadapt.training.pretrain --config CFG`, with the base model's own
  recipe (its card's lineage config: architecture, learning rate, 8,000-frame batches, SpecAugment) on the same
  target train and dev sets, random initialisation, 1 worker, max_steps the step budget, warmup 10% of it,
  train.max_minutes the cap. (Pretraining does not speed-perturb the data; the adaptation jobs do.)

Every model (base, adapted candidates, scratch models) is then scored here, in this process, with
`speechadapt.asr.evaluation.evaluate`: the serving decoder (beam search over the model's lexicon when it has
one, as loaded when this script starts; "decoder" in the JSON), and greedy decoding of the same logits. Adapted
models decode over the base's lexicon plus their training words; scratch models are scored over the base's
lexicon too (their own would hold only their few training transcripts' words).

Real speech (--no-fsdd to skip): one FSDD speaker from ../shared/data/fsdd (--fsdd-speaker, default nicolas):
train on takes 10-49, dev takes 5-9, test takes 0-4 (the dataset's test split); digit WER before and after, with
--fsdd-strategy (default: the strategy with the best target WER at the largest size among those within 1 point
of source regression).

Targets checked (in the JSON under "targets"): with 5 minutes, the best strategy (lowest target WER among those
whose source WER rose <= 1 point) cuts the base's target test WER by >= 60% relative; and the best transfer
strategy beats scratch at every size.

Prints markdown tables; writes JSON to --out (default bench/results/transfer_curve.json, with --quick
transfer_curve.quick.json; other models: transfer_curve.MODEL[.quick].json) and a PNG beside it. --quick: 1 minute,
head and the default job, 0.5 min per run, small test sets (Whisper: 0.5 minute, ~10 min in all).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import base_model as bm  # noqa: E402  (the sibling benchmark: training-corpus info, variants, machine info)
from speechadapt.training.adapt import read_json  # noqa: E402  (neither torch nor ray)

CACHE_FORMAT = 1  # bump when a data recipe below changes
STRATEGIES = ("head", "finetune", "adapters")
SCRATCH = "scratch"
# Seconds per optimiser step, one worker with one torch thread, batch 16 (adaptation) or the base recipe's
# 8,000-frame batches (scratch), measured on the project's 2-core machine under the usual background load.
STEP_SECONDS = {"head": 0.75, "adapters": 1.25, "finetune": 1.6, SCRATCH: 1.85}
DEFAULT_JOB = "default"  # the job with only the four required keys (strategy, replay, epochs, minutes: the job's own)
WHISPER = "whisper"
# Whisper (whisper-tiny-en) seconds per step, batch 16 (12 target + 4 replay utterances of ~12 words), one torch
# thread, on the same 2-core machine: `python bench/whisper_step_time.py` (head and adapters on cached encoder
# outputs; finetune runs the encoder's 30 s window forward and back for every utterance of every step).
STEP_SECONDS_WHISPER = {"head": 3.55, "adapters": 4.4, "finetune": 42.0}
WHISPER_TARGET = "en-gb-scotland"  # the default target accent of the Whisper curve (see option_defaults)
WHISPER_NO_SCRATCH = ("skipped for Whisper: a 39M-parameter encoder-decoder trained from random weights on 1-10 "
                      "minutes of audio with a few minutes of CPU learns nothing usable; the comparison that matters "
                      "is against the base")
WHISPER_NO_FSDD = "skipped for Whisper: bench/speaker_adapt.py measures real FSDD speakers on it"
SCRATCH_BATCH_FRAMES = 8000  # the frames STEP_SECONDS[SCRATCH] was measured at
TRAIN_SHARE = 0.85  # of a run's minutes spent in optimiser steps (the rest: dev evaluations, checkpoints)
BATCH = 16
POOL_MINUTES = 10.0  # the target pool holds at least this much audio
MAX_SOURCE_REGRESSION = 0.01  # the target: at most 1 point of source WER
TARGET_CUT = 0.60  # the target: >= 60% relative target WER cut at TARGET_MINUTES
TARGET_MINUTES = 5.0
FSDD_TAKES = {"test": range(0, 5), "dev": range(5, 10), "train": range(10, 50)}
_FSDD_NAME = re.compile(r"^(\d+)_([^_]+)_(\d+)\.wav$")


# -- small pure helpers (tested in tests/test_transfer_curve.py)


def parse_sizes(text: str) -> list[float]:
    sizes = sorted({float(v) for v in text.split(",") if v.strip()})
    if not sizes or any(not 0 < s <= 600 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes are minutes in (0, 600], comma-separated, not {text!r}")
    return sizes


def parse_strategies(text: str) -> list[str]:
    out = [s.strip().lower() for s in text.split(",") if s.strip()]
    bad = [s for s in out if s not in STRATEGIES]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"strategies are {', '.join(STRATEGIES)}, comma-separated, not {text!r}")
    return list(dict.fromkeys(out))


def size_tag(minutes: float) -> str:
    return f"{minutes:g}m"


def nested_subsets(durations: list[float], sizes: list[float]) -> dict[float, int]:
    """For each size (minutes), the length of the longest prefix of the pool with at most that much audio.
    Prefixes of one pool: the sets are nested. ValueError when the pool is too short for a size (a prefix
    more than one utterance short of it)."""
    total = np.cumsum(np.asarray(durations, dtype=float))
    longest = max(durations) if durations else 0.0
    out = {}
    for size in sorted(sizes):
        n = int(np.searchsorted(total, size * 60 + 1e-9, side="right"))
        have = float(total[n - 1]) if n else 0.0
        if have < size * 60 - longest - 1e-9 or n == 0:
            raise ValueError(f"the target pool holds {total[-1] / 60 if len(total) else 0:.2f} min: too short for "
                             f"{size:g} min")
        out[size] = n
    return out


def model_name(model: str) -> str:
    """The name in a model reference: name[@version], or a package folder (STORE/NAME/VERSION or NAME)."""
    path = Path(model.split("@")[0])
    return path.parent.name if path.name.isdigit() and path.parent.name else path.name


def family_of(model: str) -> str:
    """The base model's family, WHISPER or "ctc": a package folder's card architecture, else from the name. What
    the options' defaults depend on; main() checks it against the loaded card's architecture."""
    card = read_json(Path(model) / "model.json") if Path(model).is_dir() else None
    if card and card.get("architecture"):
        return WHISPER if card["architecture"] == WHISPER else "ctc"
    return WHISPER if "whisper" in model_name(model).lower() else "ctc"


def step_seconds(family: str) -> dict[str, float]:
    return STEP_SECONDS_WHISPER if family == WHISPER else STEP_SECONDS


def default_out(model: str, quick: bool) -> str:
    """bench/results/transfer_curve[.MODEL][.quick].json: base-en keeps the plain name of its existing results."""
    name = model_name(model)
    tag = "" if name in ("base-en", "") else "." + re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    return str(REPO / "bench" / "results" / f"transfer_curve{tag}{'.quick' if quick else ''}.json")


def steps_for(strategy: str, minutes: float, batch_frames: int = SCRATCH_BATCH_FRAMES,
              seconds: dict[str, float] | None = None) -> int:
    """Optimiser steps that fit in `minutes` at `seconds` per step (default STEP_SECONDS; scratch: scaled to its
    batch frames)."""
    table = STEP_SECONDS if seconds is None else seconds
    per_step = table[strategy] * (batch_frames / SCRATCH_BATCH_FRAMES if strategy == SCRATCH else 1.0)
    return max(1, int(TRAIN_SHARE * minutes * 60 / per_step))


def epochs_for(strategy: str, minutes: float, utterances: int, source_replay: float, batch: int = BATCH,
               seconds: dict[str, float] | None = None) -> int:
    """max_epochs so that the job's schedule (`adapt.TrainJob.schedule`) is about steps_for(...) steps."""
    per_batch = batch
    if source_replay > 0:
        per_batch = max(1, batch - min(max(1, round(batch * source_replay)), max(1, batch - 1)))
    steps_per_epoch = max(1, math.ceil(utterances / per_batch))
    return max(1, round(steps_for(strategy, minutes, seconds=seconds) / steps_per_epoch))


def default_spec(name: str, train_manifest: str, dev_manifest: str) -> dict:
    """The default job: the four required keys only (strategy and source replay `auto`, the job's own epochs,
    minutes, batch, learning rate, gate and source dev set)."""
    return {"name": name, "base_model": "base@1", "train_manifest": train_manifest, "dev_manifest": dev_manifest}


def models_of(strategies: list[str], default: bool, scratch: bool) -> list[str]:
    """The columns: the strategies, the default job, scratch."""
    return list(strategies) + ([DEFAULT_JOB] if default else []) + ([SCRATCH] if scratch else [])


def fsdd_split(rows: list[dict], speaker: str) -> dict[str, list[dict]]:
    """One FSDD speaker's utterances by split (FSDD_TAKES), from manifest rows."""
    out: dict[str, list[dict]] = {k: [] for k in FSDD_TAKES}
    for r in rows:
        m = _FSDD_NAME.match(Path(str(r.get("audio", ""))).name)
        if not m or m.group(2) != speaker:
            continue
        take = int(m.group(3))
        for split, takes in FSDD_TAKES.items():
            if take in takes:
                out[split].append(r)
    return out


def assess(runs: list[dict], base: dict, sizes: list[float], strategies: list[str],
           scratch_note: str | None = None) -> dict:
    """Whether the targets were met, from the scored runs ({"minutes", "model", "target_wer", "source_wer"}).
    Only the strategies count (not the default job, whose budget is its own). `scratch_note`: why there are no
    scratch runs (the scratch target is then not measured, with that note)."""
    ok = [r for r in runs if r.get("target_wer") is not None]
    bt, bs = base["target_wer"], base["source_wer"]

    def best_at(size: float, within_source: bool) -> dict | None:
        rs = [r for r in ok if r["minutes"] == size and r["model"] in strategies]
        if within_source:
            rs = [r for r in rs if r["source_wer"] - bs <= MAX_SOURCE_REGRESSION + 1e-9]
        return min(rs, key=lambda r: r["target_wer"]) if rs else None

    out: dict = {}
    if TARGET_MINUTES in sizes:
        best = best_at(TARGET_MINUTES, True)
        any_best = best_at(TARGET_MINUTES, False)
        cut = None if best is None or bt <= 0 else 1 - best["target_wer"] / bt
        out["cut_at_5_minutes"] = {
            "goal": f">= {TARGET_CUT:.0%} relative target WER cut vs the base with {TARGET_MINUTES:g} min of target "
                    f"audio, source WER rise <= {100 * MAX_SOURCE_REGRESSION:g} point, for the best strategy",
            "best_strategy": best["model"] if best else None,
            "target_wer": best["target_wer"] if best else None,
            "relative_cut": cut,
            "source_regression_points": None if best is None else 100 * (best["source_wer"] - bs),
            "best_strategy_ignoring_source": any_best["model"] if any_best else None,
            "relative_cut_ignoring_source": None if any_best is None or bt <= 0 else 1 - any_best["target_wer"] / bt,
            "met": bool(cut is not None and cut >= TARGET_CUT),
        }
    else:
        out["cut_at_5_minutes"] = {"met": None, "note": f"{TARGET_MINUTES:g} min not among the sizes"}
    per_size = []
    for size in sizes:
        best = best_at(size, False)
        scratch = next((r for r in ok if r["minutes"] == size and r["model"] == SCRATCH), None)
        beats = None if best is None or scratch is None else best["target_wer"] < scratch["target_wer"]
        per_size.append({"minutes": size, "best_strategy": best["model"] if best else None,
                         "best_target_wer": best["target_wer"] if best else None,
                         "scratch_target_wer": scratch["target_wer"] if scratch else None, "beats_scratch": beats})
    measured = [p["beats_scratch"] for p in per_size]
    out["beats_scratch"] = {"goal": "the best transfer strategy beats scratch at every size", "per_size": per_size,
                            "met": None if any(b is None for b in measured) else all(measured)}
    if scratch_note:
        out["beats_scratch"]["note"] = scratch_note
    return out


# -- data


def _key(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def make_sentences(seed: int, count: int, vocab: tuple[str, ...], words: tuple[int, int], ratio: float,
                   exclude: set[str]) -> list[str]:
    """`count` distinct generated sentences (synth's generator) not in `exclude` (normalised texts)."""
    from speechadapt.asr.text import normalize_text
    from speechadapt.training import text as textgen

    out: list[str] = []
    seen: set[str] = set()
    for i in range(200 * count):
        s = normalize_text(textgen.generate_sentence(np.random.default_rng([seed, i, 11]), vocab, words, ratio))
        if not s or s in seen or s in exclude:
            continue
        seen.add(s)
        out.append(s)
        if len(out) == count:
            return out
    raise ValueError(f"could only generate {len(out)} distinct new sentences of {count}")


WHISPER_WORDS = (4, 16)  # words per sentence of the Whisper sets


def natural_text(info: "bm.TrainingInfo", whisper: bool) -> bool:
    """Whether the sets are ordinary English from `speechadapt data text`: for Whisper (open vocabulary) and for a
    base trained on that text (its card names a sentences file, as base-en's does); else the generator's sentences
    in the base's vocabulary."""
    return whisper or bool(info.sentences_file)


def natural_sentences(workdir: Path, split: str, seed: int, count: int) -> list[str]:
    """`count` distinct normalised English sentences of a `speechadapt data text` split (train: pool and dev sets,
    test: the test sets; the splits are disjoint by a hash of the sentence), decided by the seed."""
    from speechadapt.training.corpus_text import TextConfig, build

    out = workdir / "text" / f"{split}-{seed}-{count}.txt"
    return build(TextConfig(out=out, sentences=count, seed=seed, split=split, words=WHISPER_WORDS)).sentences


def split_texts(sentences: list[str], counts: list[int]) -> list[list[str]]:
    """Consecutive disjoint slices of `sentences` of the given lengths (ValueError when there are too few)."""
    if sum(counts) > len(sentences):
        raise ValueError(f"{len(sentences)} sentences cannot fill sets of {counts}")
    out, i = [], 0
    for n in counts:
        out.append(list(sentences[i: i + n]))
        i += n
    return out


def synth_cached(workdir: Path, name: str, voices: list[str], variants: list[str], sentences: list[str],
                 seed: int, info: bm.TrainingInfo, espeak: str, *, hours: float | None = None,
                 jobs: int = 2) -> tuple[Path, bool]:
    """A synthesised set (reused when its recipe is unchanged): (manifest, was cached)."""
    from speechadapt.training.synth import SynthConfig, synthesize

    body = "".join(s + "\n" for s in sentences)
    speed = tuple(info.speed or SynthConfig(out_dir="").speed)
    pitch = tuple(info.pitch or SynthConfig(out_dir="").pitch)
    config = {"format": CACHE_FORMAT, "name": name, "voices": voices, "variants": variants, "text": _key(body),
              "count": None if hours else len(sentences), "hours": hours, "seed": seed, "speed": list(speed),
              "pitch": list(pitch), "espeak_ng": espeak}
    out = workdir / "synth" / f"{name}-{_key(config)}"
    done = out / "bench-config.json"
    if done.is_file() and (out / "manifest.jsonl").is_file():
        try:
            if json.loads(done.read_text()) == config:
                return out / "manifest.jsonl", True
        except ValueError:
            pass
    out.mkdir(parents=True, exist_ok=True)
    text_file = out / "sentences.txt"
    text_file.write_text(body)
    synthesize(SynthConfig(out_dir=out, voices=voices, variants=list(variants), sentences_file=text_file,
                           count=None if hours else len(sentences), hours=hours, seed=seed, speed=speed, pitch=pitch,
                           jobs=jobs, quiet=True))
    done.write_text(json.dumps(config, indent=1) + "\n")
    return out / "manifest.jsonl", False


def write_manifest(path: Path, rows: list[dict], base: Path) -> Path:
    """A manifest of `rows` with absolute audio paths (relative ones are taken relative to `base`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in rows:
        audio = Path(r["audio"])
        lines.append(json.dumps({**r, "audio": str(audio if audio.is_absolute() else (base / audio).resolve())}))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)
    return path


def _minutes(rows: list[dict]) -> float:
    return round(sum(float(r.get("duration", 0.0)) for r in rows) / 60, 3)


def build_data(args, info: bm.TrainingInfo, workdir: Path) -> dict:
    """The synthetic sets: {"pool", "subsets": {size: {...}}, "dev", "target_test", "source_test", "recipe"}."""
    from speechadapt.asr.text import normalize_text
    from speechadapt.training import text as textgen
    from speechadapt.training.synth import list_variants, list_voices, resolve_variants

    voices = list_voices()
    if args.target_accent not in voices:
        raise ValueError(f"--target-accent {args.target_accent!r} is not an English espeak-ng voice: {', '.join(voices)}")
    source_voices = [v for v in (info.voices or ["en-us", "en-gb"]) if v in voices]
    if args.target_accent in source_voices:
        raise ValueError(f"--target-accent {args.target_accent} is one of the base model's training voices")
    whisper = getattr(args, "family", "ctc") == WHISPER
    natural = natural_text(info, whisper)
    if natural:  # open vocabulary: no generator vocabulary
        vocab, vocab_source = (), "speechadapt data text (training/corpus_text.py): fortunes, wordnet, templates"
        words = WHISPER_WORDS
        ratio = 0.0
    else:
        vocab, vocab_source = textgen.load_vocabulary(info.vocab_size)
        if info.vocab_size and len(vocab) < info.vocab_size:
            raise ValueError(f"vocab_size {info.vocab_size} exceeds the {len(vocab)} words of {vocab_source}")
        words = info.words or (3, 10)
        ratio = 0.0 if info.vocab_size else (info.template_ratio if info.template_ratio is not None else 0.3)
    train_variants = info.variants or resolve_variants(10, list_variants())
    test_variants, basis = bm.test_variants(info, args.test_variants, 4)
    clash = sorted(set(test_variants) & set(train_variants))
    if clash:
        raise ValueError(f"test variants {clash} are also target-pool speakers: give other --test-variants")
    source_variants = list(train_variants)  # the base's speakers: the source dev set (the jobs' gate)
    if args.pool_speakers is not None and args.pool_speakers < 1:
        raise ValueError(f"--pool-speakers must be at least 1, not {args.pool_speakers}")
    if args.pool_speakers:  # more target speakers: the base's first, then other natural variants (never a test one)
        more = [v for v in bm._variant_pool() if v not in train_variants and v not in test_variants]
        if args.pool_speakers > len(train_variants) + len(more):
            raise ValueError(f"--pool-speakers {args.pool_speakers}: at most {len(train_variants) + len(more)} "
                             "speaker variants are left besides the test speakers")
        train_variants = (list(train_variants) + more)[: args.pool_speakers]
    espeak = bm._espeak_version()
    seed = args.seed * 1000
    pool_minutes = max(max(args.sizes), POOL_MINUTES) + 0.25  # one pool whatever --sizes: the same N-minute sets
    pool_count = math.ceil(pool_minutes * 60 / 1.2) + 20  # more sentences than the pool can use (~2.4 s each)
    if natural:
        pool_count = math.ceil(pool_minutes * 60 / 2.5) + 20  # 4-16 words: ~2.8 s each (217 for 10.26 min)
        pool_text, dev_text, source_dev_text = split_texts(
            natural_sentences(workdir, "train", seed, pool_count + 2 * args.dev_utterances),
            [pool_count, args.dev_utterances, args.dev_utterances])
        test_text, source_text = split_texts(
            natural_sentences(workdir, "test", seed, args.test_utterances + args.source_test_utterances),
            [args.test_utterances, args.source_test_utterances])
    else:
        exclude = set(info.texts)
        pool_text = make_sentences(seed + 1, pool_count, vocab, words, ratio, exclude)
        exclude |= set(pool_text)
        dev_text = make_sentences(seed + 2, args.dev_utterances, vocab, words, ratio, exclude)
        exclude |= set(dev_text)
        test_text = make_sentences(seed + 3, args.test_utterances, vocab, words, ratio, exclude)
        exclude |= set(test_text)
        source_text = make_sentences(seed + 4, args.source_test_utterances, vocab, words, ratio, exclude)
        exclude |= set(source_text)
        source_dev_text = make_sentences(seed + 5, args.dev_utterances, vocab, words, ratio, exclude)
    t0 = time.monotonic()
    acc = args.target_accent
    pool, c1 = synth_cached(workdir, f"{acc}-pool", [acc], train_variants, pool_text, seed + 1, info, espeak,
                            hours=pool_minutes / 60, jobs=args.jobs)
    dev, c2 = synth_cached(workdir, f"{acc}-dev", [acc], train_variants, dev_text, seed + 2, info, espeak, jobs=args.jobs)
    test, c3 = synth_cached(workdir, f"{acc}-test", [acc], test_variants, test_text, seed + 3, info, espeak, jobs=args.jobs)
    source, c4 = synth_cached(workdir, "source-test", source_voices, test_variants, source_text, seed + 4, info,
                              espeak, jobs=args.jobs)
    source_dev, c5 = synth_cached(workdir, "source-dev", source_voices, source_variants, source_dev_text, seed + 5,
                                  info, espeak, jobs=args.jobs)
    pool_rows = bm._read_jsonl(pool)
    counts = nested_subsets([float(r["duration"]) for r in pool_rows], args.sizes)
    subsets = {}
    for size, n in counts.items():
        rows = pool_rows[:n]
        path = write_manifest(pool.parent / "subsets" / f"{size_tag(size)}.jsonl", rows, pool.parent)
        subsets[size] = {"manifest": str(path), "utterances": n, "audio_minutes": _minutes(rows),
                         "speakers": len({r["speaker"] for r in rows})}
    sets = {}
    for name, manifest in (("dev", dev), ("target_test", test), ("source_test", source), ("source_dev", source_dev)):
        rows = bm._read_jsonl(manifest)
        sets[name] = {"manifest": str(write_manifest(manifest.parent / "abs.jsonl", rows, manifest.parent)),
                      "utterances": len(rows), "audio_minutes": _minutes(rows),
                      "speakers": sorted({r["speaker"] for r in rows})}
    overlap = {normalize_text(r["text"]) for r in bm._read_jsonl(Path(sets["target_test"]["manifest"]))} & \
        {normalize_text(r["text"]) for r in pool_rows}
    return {
        "pool": {"manifest": str(pool), "utterances": len(pool_rows), "audio_minutes": _minutes(pool_rows),
                 "speakers": sorted({r["speaker"] for r in pool_rows})},
        "subsets": subsets, **sets,
        "recipe": {"target_accent": acc, "source_voices": source_voices, "train_variants": list(train_variants),
                   "test_variants": list(test_variants), "test_variant_basis": basis, "vocab_size": info.vocab_size,
                   "vocab_source": vocab_source, "words": list(words), "speed": info.speed, "pitch": info.pitch,
                   "seed": seed, "espeak_ng": espeak, "cached": all((c1, c2, c3, c4, c5)),
                   "synth_seconds": round(time.monotonic() - t0, 1),
                   "test_sentences_in_pool": len(overlap),
                   "base_transcripts_excluded": len(info.texts)},
    }


def trainable(rows: list[dict], frame_seconds: float) -> tuple[list[dict], int]:
    """Rows the adaptation job's data check accepts: at most one character per output frame (FSDD has clips of
    0.2 s for "seven"). Returns (kept, dropped)."""
    from speechadapt.asr.text import normalize_text

    keep = [r for r in rows if len(normalize_text(str(r.get("text", "")))) * frame_seconds
            <= float(r.get("duration") or 0.0) + 1e-6]
    return keep, len(rows) - len(keep)


def build_fsdd(workdir: Path, speaker: str, frame_seconds: float) -> dict:
    """Manifests of one FSDD speaker's train/dev/test takes (absolute audio paths), or {"note": why not}.
    Train and dev keep only takes the job accepts (`trainable`); test keeps every take."""
    root = SHARED_DATA / "fsdd"
    if not (root / "manifest.jsonl").is_file():
        return {"note": f"skipped: {root}/manifest.jsonl is absent"}
    rows = bm._read_jsonl(root / "manifest.jsonl")
    split = fsdd_split(rows, speaker)
    if not all(split.values()):
        have = sorted({str(r.get("speaker")) for r in rows})
        return {"note": f"skipped: speaker {speaker!r} has no takes for every split (speakers here: {', '.join(have)})"}
    accent = ""
    try:
        accent = json.loads((root / "speakers.json").read_text()).get(speaker, {}).get("accent", "")
    except (OSError, ValueError, AttributeError):
        pass
    out = {"speaker": speaker, "accent": accent}
    for name, items in split.items():
        dropped = 0
        if name != "test":
            items, dropped = trainable(items, frame_seconds)
        path = write_manifest(workdir / "fsdd" / speaker / f"{name}.jsonl", items, root)
        out[name] = {"manifest": str(path), "utterances": len(items), "audio_minutes": _minutes(items),
                     "takes": f"{min(FSDD_TAKES[name])}-{max(FSDD_TAKES[name])}", "dropped_too_short": dropped}
    return out


# -- evaluation


def decoder_fingerprint() -> dict:
    """What `AsrModel.transcribe` is in this process (the decoder every score here uses)."""
    import inspect

    from speechadapt.asr import inference

    src = inspect.getsource(inference.AsrModel.transcribe)
    files = {}
    for name in ("inference.py", "decoding.py", "evaluation.py"):
        p = REPO / "asr" / name
        files[name] = hashlib.sha256(p.read_bytes()).hexdigest()[:12] if p.is_file() else None
    return {"transcribe": "greedy CTC" if "greedy_decode" in src and "beam" not in src.lower() else
            "not plain greedy (see asr/inference.py)", "transcribe_sha": hashlib.sha256(src.encode()).hexdigest()[:12],
            "files_at_start": files}


def base_lexicon(model) -> list[str] | None:
    """The base model's lexicon (None: it has none, or this checkout's AsrModel knows no lexicons)."""
    return getattr(model, "lexicon", None)


def score(model_path: Path | str, sets: dict[str, str], lexicon: list[str] | None = None,
          store: Path | None = None) -> dict:
    """{set: {"wer", "cer", "greedy_wer", "utterances", "rtf", "seconds"}} for a model on manifests, with the
    serving decoder (`evaluate`); `lexicon` replaces the model's own (scratch models: the base's words); `store`
    resolves an adapter package's base (Whisper candidates name base@1 of the benchmark's private store)."""
    import dataclasses

    from speechadapt.asr.evaluation import evaluate
    from speechadapt.asr.inference import load_model

    model = load_model(model_path, store=store)
    if lexicon is not None and hasattr(model, "lexicon"):
        model = dataclasses.replace(model, lexicon=list(lexicon))
    out = {}
    for name, manifest in sets.items():
        t0 = time.monotonic()
        try:
            r = evaluate(model, manifest, greedy=True)
        except TypeError:  # an evaluate() without the greedy option
            r = evaluate(model, manifest)
        out[name] = {"wer": r.wer, "cer": r.cer, "greedy_wer": getattr(r, "greedy_wer", None),
                     "utterances": r.utterances, "rtf": round(r.rtf, 4), "seconds": round(time.monotonic() - t0, 1)}
    return out


# -- the Ray head and the jobs


class RayHead:
    """A local Ray head on 127.0.0.1 owned by this process (private temp dir under /tmp; shut down on exit), or an
    existing cluster's address."""

    def __init__(self, address: str | None, cpus: int):
        self.address, self.cpus = address, cpus
        self.temp: str | None = None
        self.undo = None
        self.started = False

    def __enter__(self) -> "RayHead":
        if self.address:
            return self
        from speechadapt.training.pretrain import _loopback_only

        self.undo = _loopback_only()  # loopback only; the jobs (our children) inherit the environment
        import ray

        self.temp = tempfile.mkdtemp(prefix="sa-tc-ray-", dir="/tmp")
        ray.init(_node_ip_address="127.0.0.1", _temp_dir=self.temp, num_cpus=self.cpus, include_dashboard=True,
                 dashboard_host="127.0.0.1", object_store_memory=256 * 2**20, log_to_driver=False,
                 logging_level="WARNING")
        self.started = True
        self.address = ray.get_runtime_context().gcs_address
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            import ray

            ray.shutdown()
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)
        if self.undo:
            self.undo()


def run_logged(cmd: list[str], log: Path, timeout: float) -> int:
    """Run a job with its output in `log`; on timeout or interrupt: SIGTERM to its process group, then SIGKILL."""
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        # one torch thread in the job's driver (its baseline and candidate evaluations): on a busy 2-core machine
        # two threads per process mostly wait for each other; the Ray worker sets its own (--cpus-per-worker)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True, env=env)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            return 124
        except BaseException:
            _stop(proc)
            raise


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 3) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(ln.strip()[-300:] for ln in lines[-n:])


def job_choices(log: Path) -> list[str]:
    """The job's `auto` choices as it announced them ("strategy auto -> head (...)"), from its log."""
    from speechadapt.training.adapt import parse_events

    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return [e["message"] for e in parse_events(text) if e.get("phase") == "validate" and "auto ->" in e.get("message", "")]


def run_adapt(args, ray_address: str, store: Path, run_dir: Path, name: str, strategy: str, train: dict,
              dev_manifest: str, source_dev_manifest: str, minutes: float, overrides: dict | None = None) -> dict:
    """One adaptation job; returns {"run_dir", "candidate", "promoted", "reason", "job_metrics", "steps", ...}.
    `overrides` replace keys of a strategy run's spec (bench/transfer_gap.py's unconstrained run)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if strategy == DEFAULT_JOB:  # what a user gets from the four required keys: the job's own budget and settings
        from speechadapt.jobspec import JobSpec

        spec = default_spec(name, train["manifest"], dev_manifest)
        cap = JobSpec(**spec).max_minutes
    else:
        epochs = epochs_for(strategy, minutes, train["utterances"], args.source_replay,
                            seconds=step_seconds(getattr(args, "family", "ctc")))
        spec = {"name": name, "base_model": "base@1", "train_manifest": train["manifest"], "dev_manifest": dev_manifest,
                "source_dev_manifest": source_dev_manifest, "strategy": strategy, "source_replay": args.source_replay,
                "max_epochs": epochs, "max_minutes": round(minutes * args.time_cap, 3), "learning_rate": None, "batch_size": BATCH, "augment": True,
                "workers": 1, "gpus_per_worker": 0.0, "seed": args.seed, "max_source_regression": MAX_SOURCE_REGRESSION}
        spec.update(overrides or {})
        cap = spec["max_minutes"]
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=1) + "\n")
    cmd = [sys.executable, "-m", "speechadapt.training.adapt", "--spec", str(run_dir / "spec.json"), "--store",
           str(store), "--run-dir", str(run_dir), "--ray-address", ray_address, "--cpus-per-worker",
           f"{args.cpus_per_worker:g}"]
    t0 = time.monotonic()
    rc = run_logged(cmd, run_dir / "job.log", timeout=cap * 60 * 3 + 900)
    out = {"run_dir": str(run_dir), "exit_code": rc, "job_seconds": round(time.monotonic() - t0, 1),
           "spec": {k: spec[k] for k in ("strategy", "max_epochs", "max_minutes", "source_replay", "batch_size",
                                         *sorted(overrides or {}))
                    if k in spec}}
    if strategy == DEFAULT_JOB:
        out["spec"]["keys"] = sorted(spec)
        out["choices"] = job_choices(run_dir / "job.log")
    result, summary = read_json(run_dir / "result.json"), read_json(run_dir / "train_summary.json")
    if rc != 0 or result is None or not (run_dir / "candidate" / "model.json").is_file():
        out["error"] = f"adaptation job exit {rc}: {_tail(run_dir / 'job.log')}"
        return out
    out.update(candidate=str(run_dir / "candidate"), promoted=result["promoted"], reason=result["reason"],
               job_metrics=result["metrics"])
    if summary:
        out.update(steps=summary.get("steps"), total_steps=summary.get("total_steps"), best_step=summary.get("best_step"),
                   train_seconds=summary.get("train_seconds"), best_dev_wer=summary.get("best_dev_wer"),
                   trained_parameters=summary.get("trained_parameters"), lora_rank=summary.get("lora_rank"))
    return out


def scratch_config(card, train: str, dev: str, out: Path, run_dir: Path, minutes: float, args, ray_address: str) -> dict:
    """The base model's own pretraining recipe (card lineage config, else training/configs/base-en.yaml) with the
    base architecture, on the target data and the run's budget."""
    import yaml

    lineage = card.lineage if isinstance(card.lineage, dict) else {}
    cfg = lineage.get("config") if isinstance(lineage.get("config"), dict) else None
    recipe = "the base model card's lineage.config"
    if not cfg or not isinstance(cfg.get("train"), dict):
        cfg = yaml.safe_load((REPO / "training" / "configs" / "base-en.yaml").read_text())
        recipe = "training/configs/base-en.yaml"
    cfg = json.loads(json.dumps(cfg))  # a deep copy
    train_cfg = cfg["train"]
    train_cfg["model"] = dict(card.hparams)  # the base model's architecture
    frames = int(train_cfg.get("batch_frames") or SCRATCH_BATCH_FRAMES)
    steps = steps_for(SCRATCH, minutes, frames)
    train_cfg.update(max_steps=steps, max_minutes=round(minutes * args.time_cap, 3), warmup_steps=max(1, steps // 10), seed=args.seed)
    cfg.update(name="scratch", version=1, description=f"scratch baseline: {Path(train).name}", train_manifest=train,
               dev_manifest=dev, out=str(out), storage_path=str(run_dir), run_name="train", resume=False,
               overwrite=True, workers=1, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=0.0,
               checkpoint_every=max(5, steps // 12), keep_checkpoints=1, max_failures=1, ray_address=ray_address,
               log_level="WARNING", fail_at_step=0)
    return {"config": cfg, "recipe": recipe}


def run_scratch(args, card, ray_address: str, run_dir: Path, train: dict, dev_manifest: str, minutes: float) -> dict:
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    made = scratch_config(card, train["manifest"], dev_manifest, run_dir / "model", run_dir, minutes, args, ray_address)
    t0 = time.monotonic()
    if (run_dir / "model" / "model.json").is_file():  # --resume: trained before the benchmark was interrupted
        rc = 0
    else:
        (run_dir / "pretrain.yaml").write_text(yaml.safe_dump(made["config"], sort_keys=False))
        cmd = [sys.executable, "-m", "speechadapt.training.pretrain", "--config", str(run_dir / "pretrain.yaml")]
        rc = run_logged(cmd, run_dir / "job.log", timeout=minutes * args.time_cap * 60 * 3 + 900)
    tc = made["config"]["train"]
    out = {"run_dir": str(run_dir), "exit_code": rc, "job_seconds": round(time.monotonic() - t0, 1),
           "spec": {"recipe": made["recipe"], "max_steps": tc["max_steps"], "max_minutes": tc["max_minutes"],
                    "batch_frames": tc.get("batch_frames"), "learning_rate": tc.get("learning_rate"),
                    "warmup_steps": tc["warmup_steps"]}}
    card_out = read_json(run_dir / "model" / "model.json")
    if rc != 0 or card_out is None:
        out["error"] = f"pretraining job exit {rc}: {_tail(run_dir / 'job.log')}"
        return out
    lin = card_out.get("lineage", {})
    out.update(candidate=str(run_dir / "model"), steps=lin.get("steps"), total_steps=tc["max_steps"],
               best_step=lin.get("best_step"),
               train_seconds=lin.get("train_seconds"), best_dev_wer=card_out.get("metrics", {}).get("dev_wer"),
               trained_parameters=None)
    return out


def resume_dir(workdir: Path, which: str) -> Path | None:
    """--resume: a runs folder (a path, or a name in WORKDIR/runs), or "last" (the newest there)."""
    root = workdir / "runs"
    if which == "last":
        found = sorted(d for d in root.glob("*") if (d / "bench-settings.json").is_file()) if root.is_dir() else []
        return found[-1] if found else None
    for cand in (Path(which), root / which):
        if (cand / "bench-settings.json").is_file():
            return cand
    return None


def finished_rows(runs_root: Path, out_path: Path) -> dict[tuple, dict]:
    """Scored runs of an interrupted benchmark: RUN/row.json, and the rows of its --out JSON (written as it went)."""
    rows: dict[tuple, dict] = {}
    earlier = read_json(out_path)
    if earlier and earlier.get("settings", {}).get("runs_dir") == str(runs_root):
        for r in earlier.get("runs", []):
            if r.get("target_wer") is not None:
                rows[(float(r["minutes"]), r["model"])] = r
    for f in sorted(runs_root.glob("*/row.json")):
        r = read_json(f)
        if r and r.get("target_wer") is not None and "minutes" in r:
            rows[(float(r["minutes"]), r["model"])] = r
    return rows


def _cleanup(run_dir: Path, keep: bool) -> None:
    """Drop the bulky parts of a finished run (Ray Train checkpoints, model packages) unless --keep-runs."""
    if keep:
        return
    for name in ("train", "candidate", "model"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


# -- reporting


def chosen_strategy(row: dict) -> str | None:
    """The strategy the default job chose ("strategy auto -> head (...)" among its choices)."""
    for c in row.get("choices") or []:
        m = re.match(r"strategy auto -> (\w+)", c)
        if m:
            return m.group(1)
    return None


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _pts(v) -> str:
    return "-" if v is None else f"{100 * v:+.1f}"


def tables(result: dict) -> str:
    base = result["base"]
    st = result["settings"]
    sizes, models = st["sizes"], models_of(st["strategies"], st.get("default_job", False), not st["no_scratch"])
    runs = {(r["minutes"], r["model"]): r for r in result["runs"]}
    data = result["data"]
    bt, bs = base["target_wer"], base["source_wer"]
    out = [f"Target test WER ({data['recipe']['target_accent']}, {data['target_test']['utterances']} utterances by "
           f"unseen speakers; base {_pct(bt)}), source test WER in brackets (en-us/en-gb unseen speakers; base "
           f"{_pct(bs)}):", "",
           "| target audio | train utts | " + " | ".join(models) + " |",
           "| ---: | ---: | " + " | ".join("---:" for _ in models) + " |",
           "| 0 (base) | 0 | " + " | ".join(f"{_pct(bt)} ({_pct(bs)})" for _ in models) + " |"]
    for size in sizes:
        sub = data["subsets"][size_tag(size)]
        cells = []
        for m in models:
            r = runs.get((size, m))
            cells.append("-" if r is None or r.get("target_wer") is None else
                         f"{_pct(r['target_wer'])} ({_pct(r['source_wer'])})")
        out.append(f"| {size:g} min ({sub['audio_minutes']:.2f}) | {sub['utterances']} | " + " | ".join(cells) + " |")
    greedy = (f"greedy: the same models decoded without the lexicon; base {_pct(base.get('target_greedy_wer'))} "
              f"target, {_pct(base.get('source_greedy_wer'))} source") if base.get("target_greedy_wer") is not None \
        else "greedy: - (the served decoding only)"
    out += ["", f"Per run ({greedy}):", "",
            "| target audio | model | target WER | greedy | rel. cut vs base | source WER | greedy | source change "
            "(points) | steps | train s | gate |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for size in sizes:
        for m in models:
            r = runs.get((size, m))
            if r is None:
                continue
            if r.get("target_wer") is None:
                out.append(f"| {size:g} min | {m} | failed | - | - | - | - | - | - | - | {r.get('error', '')[:120]} |")
                continue
            cut = None if bt <= 0 else 1 - r["target_wer"] / bt
            gate = "-" if m == SCRATCH else ("promoted" if r.get("promoted") else "rejected")
            steps = r.get("steps", "-")
            if r.get("total_steps") and isinstance(steps, int) and steps < r["total_steps"]:
                steps = f"{steps} of {r['total_steps']} (time cap)"
            label = m if m != DEFAULT_JOB else f"default ({chosen_strategy(r) or '?'})"
            out.append(f"| {size:g} min | {label} | {_pct(r['target_wer'])} | {_pct(r.get('target_greedy_wer'))} | "
                       f"{_pct(cut)} | {_pct(r['source_wer'])} | {_pct(r.get('source_greedy_wer'))} | "
                       f"{_pts(r['source_wer'] - bs)} | {steps} | {r.get('train_seconds', '-')} | {gate} |")
    if DEFAULT_JOB in models:
        out += ["", f"default: the job with the four required keys only ({st.get('default_job_spec', '')})."]
    if st.get("scratch_note"):
        out += ["", f"scratch: {st['scratch_note']}."]
    f = result.get("fsdd")
    if f and f.get("target_wer") is not None:
        out += ["", f"Real speech: FSDD speaker {f['speaker']} ({f.get('accent') or '?'}), {f['strategy']}, trained on "
                    f"takes {f['data']['train']['takes']} ({f['data']['train']['utterances']} utterances, "
                    f"{f['data']['train']['audio_minutes']:.2f} min), dev takes {f['data']['dev']['takes']}:", "",
                "| set | utts | before (base) | after (adapted) |", "| --- | ---: | ---: | ---: |",
                f"| digit WER, takes {f['data']['test']['takes']} | {f['data']['test']['utterances']} | "
                f"{_pct(f['base_target_wer'])} | {_pct(f['target_wer'])} |",
                f"| digit WER, greedy decoding | {f['data']['test']['utterances']} | "
                f"{_pct(f.get('base_target_greedy_wer'))} | {_pct(f.get('target_greedy_wer'))} |",
                f"| digit CER, takes {f['data']['test']['takes']} | {f['data']['test']['utterances']} | "
                f"{_pct(f['base_target_cer'])} | {_pct(f['target_cer'])} |",
                f"| source test WER | {data['source_test']['utterances']} | {_pct(bs)} | {_pct(f['source_wer'])} |"]
    elif f:
        out += ["", f"Real speech (FSDD): {f.get('note') or f.get('error') or 'not run'}"]
    return "\n".join(out)


def targets_text(targets: dict) -> str:
    c, s = targets["cut_at_5_minutes"], targets["beats_scratch"]
    lines = []
    if c.get("met") is None:
        lines.append(f"- 5-minute target: not measured ({c.get('note', '')})")
    else:
        if c["best_strategy"]:
            lines.append(f"- 5 min, best strategy within 1 point of source WER: {c['best_strategy']}, "
                         f"{100 * c['relative_cut']:.1f}% relative cut (source {c['source_regression_points']:+.1f} "
                         f"points): {'met' if c['met'] else 'NOT met'} (goal >= {100 * TARGET_CUT:.0f}%)")
        else:
            lines.append("- 5 min: no strategy stayed within 1 point of source WER: NOT met")
        if c.get("best_strategy_ignoring_source") and c["best_strategy_ignoring_source"] != c["best_strategy"]:
            lines.append(f"  (ignoring forgetting: {c['best_strategy_ignoring_source']}, "
                         f"{100 * c['relative_cut_ignoring_source']:.1f}% cut)")
    if s.get("note"):
        lines.append(f"- transfer beats scratch: not measured ({s['note']})")
        return "\n".join(lines)
    verdict = {True: "met", False: "NOT met", None: "not measured at every size"}[s["met"]]
    per = ", ".join(f"{p['minutes']:g} min {'yes' if p['beats_scratch'] else 'no' if p['beats_scratch'] is False else '?'}"
                    for p in s["per_size"])
    lines.append(f"- transfer beats scratch at every size: {verdict} ({per})")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, sizes = result["base"], result["settings"]["sizes"]
    runs = [r for r in result["runs"] if r.get("target_wer") is not None]
    st = result["settings"]
    models = models_of(st["strategies"], st.get("default_job", False), not st["no_scratch"])
    colors = {"head": "tab:blue", "finetune": "tab:orange", "adapters": "tab:green", SCRATCH: "tab:gray",
              DEFAULT_JOB: "tab:purple"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), dpi=100)
    for m in models:
        pts = sorted((r["minutes"], r["target_wer"], r["source_wer"]) for r in runs if r["model"] == m)
        if not pts:
            continue
        style = dict(color=colors.get(m), marker="s" if m == SCRATCH else "o",
                     linestyle="--" if m == SCRATCH else "-",
                     label=m + {SCRATCH: " (from scratch)", DEFAULT_JOB: " job (4 keys)"}.get(m, ""))
        ax1.plot([p[0] for p in pts], [100 * p[1] for p in pts], **style)
        if m != SCRATCH:
            ax2.plot([p[0] for p in pts], [100 * p[2] for p in pts], **style)
    ax1.axhline(100 * base["target_wer"], color="black", linestyle=":", label="base (no adaptation)")
    ax1.axhline(100 * (1 - TARGET_CUT) * base["target_wer"], color="tab:red", linestyle="-.", linewidth=1,
                label=f"goal at {TARGET_MINUTES:g} min: -{100 * TARGET_CUT:.0f}% rel.")
    ax2.axhline(100 * base["source_wer"], color="black", linestyle=":", label="base")
    ax2.axhline(100 * (base["source_wer"] + MAX_SOURCE_REGRESSION), color="tab:red", linestyle="-.", linewidth=1,
                label=f"base + {100 * MAX_SOURCE_REGRESSION:g} point")
    scratch_src = [r["source_wer"] for r in runs if r["model"] == SCRATCH]
    adapted_src = [r["source_wer"] for r in runs if r["model"] != SCRATCH] + [base["source_wer"] + MAX_SOURCE_REGRESSION]
    ax2.set_ylim(0, 100 * max(adapted_src) * 1.25 + 1)
    for ax, title in ((ax1, f"target test WER ({result['data']['recipe']['target_accent']}, unseen speakers)"),
                      (ax2, "source test WER (en-us/en-gb, unseen speakers): forgetting")):
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.set_xticklabels([f"{s:g}" for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("minutes of target audio")
        ax.set_ylabel("WER (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set_ylim(0, max(105, 100 * max([r["target_wer"] for r in runs] + [base["target_wer"]]) + 5))
    if scratch_src:
        ax2.text(0.02, 0.02, f"scratch models: {100 * min(scratch_src):.0f}-{100 * max(scratch_src):.0f}% (not drawn)",
                 transform=ax2.transAxes, fontsize=8, color="tab:gray")
    minutes = result["settings"]["minutes_per_run"]
    fig.suptitle(f"transfer curve: {result['model']}, {minutes:g} min of training per run"
                 + (" (default job: its own budget)" if DEFAULT_JOB in models else ""), fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)


# -- main


def option_defaults(family: str, quick: bool) -> dict:
    """Defaults of the options left unset. Whisper steps are ~5x slower than base-en's on the 2-core machine, every
    Whisper job caches encoder outputs (~0.5 s an utterance) and scoring decodes a 15-30 s window per utterance, so
    its full run has 3 sizes x (head, adapters, the default job) in 2-minute budgets and smaller test sets (76 min
    in all); finetune (~42 s a step: the encoder forward and back for every utterance) is left out."""
    if family == WHISPER:
        return {"sizes": [0.5] if quick else [1.0, 5.0, 10.0],
                "strategies": ["head"] if quick else ["head", "adapters"],
                "minutes_per_run": 0.5 if quick else 2.0, "test_utterances": 20 if quick else 60,
                "source_test_utterances": 20 if quick else 60, "dev_utterances": 10 if quick else 20,
                "source_replay": 0.25, "target_accent": WHISPER_TARGET}
    return {"sizes": [1.0] if quick else [1.0, 2.0, 5.0, 10.0], "strategies": ["head"] if quick else list(STRATEGIES),
            "minutes_per_run": 0.5 if quick else 3.0, "test_utterances": 30 if quick else 120,
            "source_test_utterances": 30 if quick else 120, "dev_utterances": 10 if quick else 20,
            "source_replay": 0.5, "target_accent": "en-gb-scotland"}


def whisper_info() -> bm.TrainingInfo:
    """What the Whisper sets are built around: general English (en-us, en-gb) as the source, and base-en's 10
    espeak-ng speaker variants for the target pool (so the test speakers are the same 4 unseen variants)."""
    from speechadapt.training.synth import list_variants, resolve_variants

    return bm.TrainingInfo(source="", voices=["en-us", "en-gb"], variants=resolve_variants(10, list_variants()),
                           notes=["Whisper's training data is not ours: source = general English read by espeak-ng "
                                  "en-us/en-gb; target pool speakers = synth's first 10 natural variants"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="base-en", help="base model: name[@version] in --model-store (or built in), "
                   "or a package folder (default: base-en)")
    p.add_argument("--model-store", default=str(REPO / "models"), metavar="DIR", help="default: <repo>/models")
    p.add_argument("--sizes", type=parse_sizes, default=None, metavar="M,M,...",
                   help="minutes of target training audio (default: 1,2,5,10; --quick: 1; whisper: 1,5,10; --quick 0.5)")
    p.add_argument("--strategies", type=parse_strategies, default=None, metavar="S,S,...",
                   help="adaptation strategies (default: head,finetune,adapters; --quick: head; whisper: head,adapters)")
    p.add_argument("--minutes-per-run", type=float, default=None, metavar="M",
                   help="training budget of every run, adaptation and scratch (default: 3; --quick: 0.5; whisper: 2)")
    p.add_argument("--time-cap", type=float, default=2.0, metavar="F",
                   help="wall-clock cap of a run's training as a multiple of --minutes-per-run (default: 2; the step "
                        "budget normally ends it first)")
    p.add_argument("--target-accent", default=None, help="espeak-ng voice to adapt to (default: en-gb-scotland; "
                   f"whisper: {WHISPER_TARGET})")
    p.add_argument("--source-replay", type=float, default=None, metavar="P",
                   help="share of each adaptation batch drawn from the base's source data (default: 0.5; whisper: "
                        "0.25, the job's own default for Whisper)")
    p.add_argument("--no-scratch", action="store_true", help="skip the from-scratch baseline")
    p.add_argument("--no-fsdd", action="store_true", help="skip the real-speech (FSDD) row")
    p.add_argument("--fsdd-speaker", default="nicolas", help="FSDD speaker to adapt to (default: nicolas)")
    p.add_argument("--fsdd-strategy", type=lambda s: parse_strategies(s)[0], default=None, metavar="S",
                   help="strategy for the FSDD row (default: the best at the largest size, see above)")
    p.add_argument("--test-utterances", type=int, default=None, metavar="N",
                   help="target test utterances (default: 120; --quick: 30; whisper: 60, --quick 20)")
    p.add_argument("--source-test-utterances", type=int, default=None, metavar="N",
                   help="source test utterances (default: 120; --quick: 30; whisper: 60, --quick 20)")
    p.add_argument("--dev-utterances", type=int, default=None, metavar="N",
                   help="target dev utterances, shared by every run (default: 20; --quick: 10)")
    p.add_argument("--pool-speakers", type=int, default=None, metavar="N",
                   help="speaker variants of the target pool and dev set (default: the base's own, 10 for base-en); "
                        "more: the base's, then other natural variants, never a test speaker")
    p.add_argument("--test-variants", type=lambda s: [v.strip() for v in s.split(",") if v.strip()], default=None,
                   metavar="V,V,...", help="speaker variants of the test sets (default: 4 the base never heard)")
    p.add_argument("--seed", type=int, default=7, help="data and training seed (default: 7)")
    p.add_argument("--workdir", default=str(REPO / ".cache" / "bench" / "transfer"), metavar="DIR",
                   help="synthesised sets (cached) and run folders (default: .cache/bench/transfer)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="JSON results (default: bench/results/transfer_curve.json; --quick: transfer_curve.quick.json); "
                        "the PNG plot goes beside it")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: a private local head)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs (torch threads) of the training worker")
    p.add_argument("--resume", metavar="DIR|last", help="continue an interrupted benchmark: reuse the scored runs of "
                   "its runs folder (.cache/bench/transfer/runs/<time>, or `last`); the settings must be the same")
    p.add_argument("--keep-runs", action="store_true", help="keep checkpoints and model packages of every run")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="synthesis processes (default: 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for scoring (default: 1)")
    p.add_argument("--no-default", action="store_true",
                   help="skip the default job (the four required keys only) at every size")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 min, head, 0.5 min per run, small test sets "
                   "(whisper: 0.5 min of target audio, head and the default job, 20 test utterances)")
    args = p.parse_args(argv)
    args.family = family_of(args.model)
    for k, v in option_defaults(args.family, args.quick).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.out is None:
        args.out = default_out(args.model, args.quick)
    if not 0 < args.minutes_per_run <= 120:
        p.error("--minutes-per-run must be in (0, 120]")
    if not args.time_cap >= 1:
        p.error("--time-cap must be >= 1")
    if not 0 <= args.source_replay < 1:
        p.error("--source-replay is a share in [0, 1)")
    if min(args.test_utterances, args.source_test_utterances) < 5 or args.dev_utterances < 5:
        p.error("test sets need at least 5 utterances, the dev set at least 5")
    return args


def _loadavg() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _log(msg: str) -> None:
    print(f"[{dt.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)  # unwind: stop the running job, shut Ray down
    import torch

    from speechadapt.asr.inference import load_model

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started, load_start = time.monotonic(), _loadavg()
    whisper = args.family == WHISPER
    try:
        if whisper:
            from speechadapt.asr.importers import DEFAULT_WHISPER, ensure_default_whisper

            if args.model.split("@")[0] == DEFAULT_WHISPER:
                ensure_default_whisper()  # built from the bundled weights when missing (no network)
        base_model = load_model(args.model, store=args.model_store)
    except (LookupError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    architecture = getattr(base_model.card, "architecture", "")
    if (architecture == WHISPER) != whisper:
        print(f"error: --model {args.model} is a {architecture or 'unknown'} model, but its name "
              f"{'says' if whisper else 'does not say'} whisper (the options' defaults follow the name): "
              "give a name that says what it is", file=sys.stderr)
        return 2
    model_dir = base_model.ref.path
    decoder = decoder_fingerprint()
    beam = getattr(base_model, "beam", None)
    if whisper:
        decoder["base"] = {"kind": "the served Whisper decoding (CTranslate2 beam search, card.decoding; texts "
                                   "normalised, numbers spelled out, before scoring)",
                           **(base_model.card.decoding if isinstance(base_model.card.decoding, dict) else {}),
                           "note": "adapted packages are served as their cards say: with the 30 s window they were "
                                   "trained on (min_window_s 30), the base with its 15 s window"}
    elif getattr(base_model, "lexicon", None) and beam is not None and hasattr(beam, "cfg"):
        decoder["base"] = {"kind": "beam search over the model's lexicon", "lexicon_words": len(base_model.lexicon),
                           **beam.cfg.to_dict()}
    else:
        decoder["base"] = {"kind": "greedy CTC (no lexicon)"}
    workdir = Path(args.workdir)
    if whisper:
        args.no_scratch = True
        args.no_fsdd = True
    try:
        info = whisper_info() if whisper else bm.training_info(base_model.card, model_dir, None)
        data = build_data(args, info, workdir)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _log(f"data: pool {data['pool']['audio_minutes']:.2f} min ({data['pool']['utterances']} utts), subsets "
         + ", ".join(f"{size_tag(s)}={v['utterances']}" for s, v in data["subsets"].items())
         + f"; dev {data['dev']['utterances']}, target test {data['target_test']['utterances']}, source test "
         f"{data['source_test']['utterances']} ({'cached' if data['recipe']['cached'] else 'synthesised'} in "
         f"{data['recipe']['synth_seconds']} s)")
    fsdd = ({"note": WHISPER_NO_FSDD} if whisper else None) if args.no_fsdd else \
        build_fsdd(workdir, args.fsdd_speaker, base_model.frame_seconds)
    test_sets = {"target": data["target_test"]["manifest"], "source": data["source_test"]["manifest"]}
    if fsdd and "note" not in fsdd:
        test_sets["fsdd"] = fsdd["test"]["manifest"]
    lexicon = base_lexicon(base_model)
    base_scores = score(model_dir, test_sets)
    _log(f"base {base_model.name}: target test WER {_pct(base_scores['target']['wer'])}, source test WER "
         f"{_pct(base_scores['source']['wer'])}" + (f", FSDD {args.fsdd_speaker} takes 0-4 WER "
                                                       f"{_pct(base_scores['fsdd']['wer'])}" if "fsdd" in base_scores else ""))

    out_path = Path(args.out)
    same = {"model_path": str(model_dir), "minutes_per_run": args.minutes_per_run, "time_cap": args.time_cap,
            "source_replay": args.source_replay, "seed": args.seed, "target_accent": args.target_accent,
            "cpus_per_worker": args.cpus_per_worker, "step_seconds": step_seconds(args.family), "train_share": TRAIN_SHARE,
            "data": {k: data[k]["manifest"] for k in ("pool", "dev", "target_test", "source_test", "source_dev")}}
    previous: dict[tuple, dict] = {}
    if args.resume:
        runs_root = resume_dir(workdir, args.resume)
        if runs_root is None:
            print(f"error: --resume {args.resume}: no such runs folder in {workdir / 'runs'}", file=sys.stderr)
            return 2
        before = read_json(runs_root / "bench-settings.json")
        if before != json.loads(json.dumps(same)):
            print(f"error: --resume {runs_root}: its settings differ from this command's: {before}", file=sys.stderr)
            return 2
        previous = finished_rows(runs_root, out_path)
        _log(f"resuming {runs_root}: {len(previous)} finished run(s) reused")
    else:
        runs_root = workdir / "runs" / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        runs_root.mkdir(parents=True, exist_ok=True)
        (runs_root / "bench-settings.json").write_text(json.dumps(same, indent=1) + "\n")
    store = runs_root / "store"
    if not (store / "base" / "1" / "model.json").is_file():
        shutil.rmtree(store / "base" / "1", ignore_errors=True)
        shutil.copytree(model_dir, store / "base" / "1")
    result = {
        "model": base_model.name, "model_path": str(model_dir),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None
        else shlex.join(["python", "bench/transfer_curve.py", *argv]),
        "complete": False,
        "settings": {"sizes": args.sizes, "strategies": args.strategies, "minutes_per_run": args.minutes_per_run,
                     "budget": "optimiser steps that take minutes_per_run at step_seconds_assumed (x train_share); "
                               "wall-clock cap minutes_per_run x time_cap", "time_cap": args.time_cap,
                     "target_accent": args.target_accent, "pool_speakers": len(data["recipe"]["train_variants"]),
                     "source_replay": args.source_replay, "batch_size": BATCH,
                     "learning_rate": "the strategy's default (speechadapt.jobspec.DEFAULT_LR)", "augment": True,
                     "workers": 1, "cpus_per_worker": args.cpus_per_worker, "seed": args.seed, "quick": args.quick,
                     "no_scratch": args.no_scratch, "step_seconds_assumed": step_seconds(args.family),
                     "train_share": TRAIN_SHARE, "default_job": not args.no_default,
                     "default_job_spec": "name, base_model, train_manifest, dev_manifest: strategy and "
                                         "source_replay auto, the job's own max_epochs (30), max_minutes (10), "
                                         "batch, learning rate, gate and source dev set",
                     "scratch_note": WHISPER_NO_SCRATCH if whisper else None,
                     "ray": "private local head (127.0.0.1)" if not args.ray_address else args.ray_address,
                     "runs_dir": str(runs_root), "scoring_threads": args.threads},
        "decoder": decoder,
        "data": {**{k: v for k, v in data.items() if k != "subsets"},
                 "subsets": {size_tag(s): v for s, v in data["subsets"].items()}},
        "training": info.as_dict(),
        "base": {"target_wer": base_scores["target"]["wer"], "target_cer": base_scores["target"]["cer"],
                 "target_greedy_wer": base_scores["target"]["greedy_wer"], "source_wer": base_scores["source"]["wer"],
                 "source_cer": base_scores["source"]["cer"], "source_greedy_wer": base_scores["source"]["greedy_wer"],
                 "rtf": base_scores["target"]["rtf"], "lexicon_words": len(lexicon) if lexicon else None},
        "runs": [],
        "fsdd": None,
    }
    if fsdd and "note" in fsdd:
        result["fsdd"] = {"note": fsdd["note"]}

    def save() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = out_path.with_name(out_path.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        os.replace(tmp, out_path)

    plan = [(size, m) for size in args.sizes for m in models_of(args.strategies, not args.no_default, not args.no_scratch)]
    total = len(plan) + (1 if fsdd and "note" not in fsdd else 0)
    save()
    with RayHead(args.ray_address, max(os.cpu_count() or 1, math.ceil(args.cpus_per_worker))) as head:
        signal.signal(signal.SIGTERM, _on_sigterm)  # ray.init installed its own, which exits without cleaning up
        _log(f"Ray: {head.address} ({'ours, temp ' + head.temp if head.temp else 'external'}); runs in {runs_root}")
        for i, (size, m) in enumerate(plan, 1):
            train = data["subsets"][size]
            run_dir = runs_root / f"{size_tag(size)}-{m}"
            if (size, m) in previous:
                result["runs"].append({**previous[(size, m)], "reused": True})
                save()
                _log(f"[{i}/{total}] {size:g} min {m}: reused from the interrupted run")
                continue
            t0, load0 = time.monotonic(), _loadavg()
            if m == SCRATCH:
                run = run_scratch(args, base_model.card, head.address, run_dir, train, data["dev"]["manifest"],
                                  args.minutes_per_run)
            else:
                run = run_adapt(args, head.address, store, run_dir, f"tc-{size_tag(size)}-{m}", m, train,
                                data["dev"]["manifest"], data["source_dev"]["manifest"], args.minutes_per_run)
            row = {"minutes": size, "model": m, "train_utterances": train["utterances"],
                   "train_audio_minutes": train["audio_minutes"], **run}
            if "error" not in run:
                # scratch models know only their training transcripts' words: score them over the base's lexicon,
                # the words every adapted model decodes over
                s = score(run["candidate"], {"target": test_sets["target"], "source": test_sets["source"]},
                          lexicon=lexicon if m == SCRATCH else None, store=store)
                row.update(target_wer=s["target"]["wer"], target_cer=s["target"]["cer"],
                           target_greedy_wer=s["target"]["greedy_wer"], source_wer=s["source"]["wer"],
                           source_cer=s["source"]["cer"], source_greedy_wer=s["source"]["greedy_wer"],
                           score_seconds=round(s["target"]["seconds"] + s["source"]["seconds"], 1))
                row.pop("candidate")
            row.update(wall_seconds=round(time.monotonic() - t0, 1), loadavg_start=load0, loadavg_end=_loadavg())
            result["runs"].append(row)
            if row.get("target_wer") is not None:
                (run_dir / "row.json").write_text(json.dumps(row, indent=1, default=str) + "\n")
                _cleanup(run_dir, args.keep_runs)
            save()
            if row.get("target_wer") is not None:
                _log(f"[{i}/{total}] {size:g} min {m}: target WER {_pct(row['target_wer'])}, source WER "
                     f"{_pct(row['source_wer'])} ({row.get('steps')} steps, {row.get('train_seconds')} s training, "
                     f"{row['wall_seconds']:.0f} s in all)")
            else:
                _log(f"[{i}/{total}] {size:g} min {m}: FAILED: {row.get('error')}")

        if fsdd and "note" not in fsdd:
            strategy = args.fsdd_strategy
            if strategy is None:
                largest = max(args.sizes)
                ok = [r for r in result["runs"] if r["minutes"] == largest and r["model"] in args.strategies
                      and r.get("target_wer") is not None]
                within = [r for r in ok if r["source_wer"] - result["base"]["source_wer"] <= MAX_SOURCE_REGRESSION + 1e-9]
                pick = min(within or ok, key=lambda r: r["target_wer"]) if ok else None
                strategy = pick["model"] if pick else args.strategies[0]
            run_dir = runs_root / f"fsdd-{args.fsdd_speaker}-{strategy}"
            t0 = time.monotonic()
            done = read_json(run_dir / "row.json")
            run = {"reused": True} if done else run_adapt(
                args, head.address, store, run_dir, f"tc-fsdd-{args.fsdd_speaker}-{strategy}", strategy, fsdd["train"],
                fsdd["dev"]["manifest"], data["source_dev"]["manifest"], args.minutes_per_run)
            row = {"speaker": fsdd["speaker"], "accent": fsdd["accent"], "strategy": strategy,
                   "data": {k: fsdd[k] for k in ("train", "dev", "test")},
                   "base_target_wer": base_scores["fsdd"]["wer"], "base_target_cer": base_scores["fsdd"]["cer"],
                   "base_target_greedy_wer": base_scores["fsdd"]["greedy_wer"], **run}
            if done:
                row = {**done, "reused": True}
                _log(f"[{total}/{total}] FSDD {fsdd['speaker']} ({strategy}): reused from the interrupted run")
            elif "error" not in run:
                s = score(run["candidate"], {"fsdd": test_sets["fsdd"], "source": test_sets["source"]})
                row.update(target_wer=s["fsdd"]["wer"], target_cer=s["fsdd"]["cer"],
                           target_greedy_wer=s["fsdd"]["greedy_wer"], source_wer=s["source"]["wer"],
                           source_greedy_wer=s["source"]["greedy_wer"])
                row.pop("candidate")
                row["wall_seconds"] = round(time.monotonic() - t0, 1)
                (run_dir / "row.json").write_text(json.dumps(row, indent=1, default=str) + "\n")
                _cleanup(run_dir, args.keep_runs)
                _log(f"[{total}/{total}] FSDD {fsdd['speaker']} ({strategy}): digit WER "
                     f"{_pct(row['base_target_wer'])} -> {_pct(row['target_wer'])}, source WER {_pct(row['source_wer'])}")
            else:
                _log(f"[{total}/{total}] FSDD {fsdd['speaker']} ({strategy}): FAILED: {row['error']}")
                row["wall_seconds"] = round(time.monotonic() - t0, 1)
            result["fsdd"] = row
            save()

    if not args.keep_runs:
        shutil.rmtree(store, ignore_errors=True)  # the base copy and any published versions
    result["targets"] = assess(result["runs"], result["base"], args.sizes, args.strategies,
                               scratch_note=WHISPER_NO_SCRATCH if whisper else None)
    result["data"]["subsets"] = {size_tag(s): v for s, v in data["subsets"].items()}
    end_files = decoder_fingerprint()["files_at_start"]
    result["decoder"]["files_at_end"] = end_files
    if end_files != decoder["files_at_start"]:
        result["decoder"]["note"] = ("asr/ decoder files changed during the run: every score here used the version "
                                     "loaded at start; the jobs' own dev metrics may mix versions")
    machine = bm.machine_info("cpu")
    machine["loadavg_start"], machine["loadavg_end"] = load_start, _loadavg()
    result["machine"] = machine
    result["wall_seconds"] = round(time.monotonic() - started, 1)
    result["runs_wall_seconds"] = round(sum(r.get("wall_seconds") or 0 for r in result["runs"])
                                        + ((result.get("fsdd") or {}).get("wall_seconds") or 0), 1)
    result["settings"]["resumed"] = bool(args.resume)
    result["complete"] = True
    text = tables(result)
    result["markdown"] = text + "\n\n" + targets_text(result["targets"])
    save()
    png = out_path.with_suffix(".png")
    plot(result, png)
    print()
    print(result["markdown"])
    print(f"\nwrote {out_path} and {png} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
