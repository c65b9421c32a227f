"""An adaptation job as a Ray job: fine-tune a base model on target-domain audio, gate it, publish a new version.

    python -m speechadapt.training.adapt --spec SPEC.json --store STORE_DIR --run-dir RUN_DIR
                                         [--job-id ID] [--ray-address ADDR] [--cpus-per-worker N]
                                         [--data-root DIR ...]

SPEC.json is `JobSpec.to_dict()` with local manifest paths (data:// URIs resolved by the caller);
`source_dev_manifest` may be "". The base model is `spec.base_model` in STORE_DIR (or a built-in model).

Phases, each announced on stdout as an event (below):

1. validate: with --data-root, every manifest and audio path must lie under one of those folders
   (`speechadapt.asr.data_access`); then `check_job_data` against the base model's tokenizer. Problems: one
   `error` event listing them all (also under "problems"), exit 2. A bad spec or an unknown base model is also exit 2.
2. baseline: the base model's WER on the target dev set and on a source dev set, relatedness = base source WER /
   base target WER clipped to [0, 1], a feature-statistics distance between target and source audio, and
   warnings when the data or the target dev set is small or transfer likely negative (`relatedness.py`;
   `warning: ...` events, the report's "relatedness"). Kept in RUN_DIR/baseline.json and reused when the command runs again.
   Source dev: `spec.source_dev_manifest`, else a held-back slice of the base model's source domain found
   through the base card's lineage: a readable source dev manifest named there (at most 100 utterances), else
   ~60 utterances synthesized with espeak-ng in the source voices and vocabulary into RUN_DIR/source_dev.
3. train: a Ray Train TorchTrainer (DDP over spec.workers workers; gloo on CPU, nccl with GPUs), checkpoints
   in RUN_DIR/train; FailureConfig(max_failures=2) resumes after a lost worker, and re-running the command
   resumes from the last checkpoint. The strategy (`strategies.py`) picks what trains; spec.batch_size
   target utterances per worker and step (less the source_replay share, drawn from the base's source
   domain); SpecAugment and 0.9/1.1 speed perturbation when spec.augment; warmup then cosine decay from
   spec.lr; budget spec.max_epochs (one epoch = as many utterances as the target train set has) and
   spec.max_minutes of training; target dev WER every epoch (or every few epochs for tiny sets, every 200
   steps at most); the best state by target dev WER becomes the candidate (LoRA merged) in RUN_DIR/candidate.
4. evaluate: the candidate's WER on the target and source dev sets (the serving decoder).
5. gate + publish: promoted only if adapted target WER < base target WER and adapted source WER - base source
   WER <= spec.max_source_regression. A promoted model is published as STORE/<name>/<N>/, N = 1 + the highest
   version there, written to a temp folder in STORE/<name>/, fsynced, then renamed into place (the next N
   on a collision); its card's lineage records the base model, strategy, spec, job id and metrics. A re-run
   of a job that already published finds its version (lineage.run) instead of publishing twice.
6. report: RUN_DIR/report/metrics.json (spec, metrics, decision, history) and training.png (loss and dev WER
   over steps); the `result` event; RUN_DIR/result.json (the same object, written atomically). Exit 0
   whether promoted or not. A run whose result.json exists only repeats its result event.

Events: one line each on stdout, `@@speechadapt-event ` then a one-line JSON object (worker lines get a Ray
prefix such as "(RayTrainWorker pid=1) ": search for the marker anywhere in the line):
  {"phase": validate|baseline|train|evaluate|publish|result|error, "step", "total_steps",
   "loss" (-1 when not measured), "dev_wer" (0..1, -1 when not measured), "eta_s", "message", "time" (unix s)}
Train events come at least every 10 steps and at every dev evaluation. The result event adds "result":
  {"promoted", "reason", "model", "version" (0 when not promoted), "metrics": {"base_target_wer",
   "adapted_target_wer", "base_source_wer", "adapted_source_wer", "relatedness", "trained_parameters",
   "total_parameters"}, "report_dir"}.
Failures: an `error` event with the message and exit 1; SIGTERM (a stopped Ray job): the trainer is aborted,
an `error` event "cancelled", exit 143. Nothing half-written is ever visible in the store.

Fault injection (tests): SPEECHADAPT_FAIL_AT_STEP=N makes one worker exit once after step N.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from speechadapt.asr.store import fsync_dir, store_versions
from speechadapt.training import relatedness, search

EVENT_MARKER = "@@speechadapt-event "
PHASES = ("validate", "baseline", "train", "evaluate", "publish", "result", "error")
FAIL_ENV = "SPEECHADAPT_FAIL_AT_STEP"
RESULT_FILE = "result.json"
BASELINE_FILE = "baseline.json"
SUMMARY_FILE = "train_summary.json"
CANDIDATE = "candidate"
TRAIN_RUN = "train"  # the Ray Train run folder in RUN_DIR
FAULT_MARKER = ".fault-injected"
SOURCE_DEV_UTTERANCES = 60  # synthesized when the base model names no readable source dev set
SOURCE_DEV_MAX = 100  # taken from a named source dev manifest
LOG_EVERY = 10  # steps between train events
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 143


class JobInputError(Exception):
    """The spec or the data cannot be used; `problems` says what to fix (exit 2)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class Cancelled(KeyboardInterrupt):
    """SIGTERM: the job was stopped. A KeyboardInterrupt, so that Ray's blocking calls unwind as on Ctrl-C."""


# ---------------------------------------------------------------------------------------------------------
# Events


def event(phase: str, *, step: int = 0, total_steps: int = 0, loss: float = -1.0, dev_wer: float = -1.0,
          eta_s: float = 0.0, message: str = "", **extra) -> dict:
    assert phase in PHASES, phase
    clean = lambda v: -1.0 if v is None or not math.isfinite(v) else round(float(v), 6)  # noqa: E731
    return {"phase": phase, "step": int(step), "total_steps": int(total_steps), "loss": clean(loss),
            "dev_wer": clean(dev_wer), "eta_s": round(max(0.0, float(eta_s)), 1), "message": message,
            "time": round(time.time(), 3), **extra}


def worker_say(job, rank: int):
    """A training worker's `say(**event fields)`: rank 0 emits train events, the job's label before each message."""
    def say(**kw) -> None:
        if rank == 0:
            emit(event("train", **{**kw, "message": job.label + kw.get("message", "")}))
    return say


def emit(ev: dict) -> None:
    """One event line on stdout, flushed (worker stdout reaches the driver through Ray's log stream)."""
    sys.stdout.write(EVENT_MARKER + json.dumps(ev, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def parse_events(text: str) -> list[dict]:
    """The events in a job's output (any prefixes before the marker are ignored)."""
    out = []
    for line in text.splitlines():
        i = line.find(EVENT_MARKER)
        if i >= 0:
            try:
                out.append(json.loads(line[i + len(EVENT_MARKER):]))
            except json.JSONDecodeError:
                pass
    return out


# ---------------------------------------------------------------------------------------------------------
# Files


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=1) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_json(path: Path) -> dict | None:
    """A JSON object file's content; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------------------
# The source domain of a base model (for the source dev set and replay)


@dataclass(frozen=True)
class SourceDomain:
    """What the base model was trained on, as far as its lineage tells."""

    train_manifest: str | None = None  # readable paths only
    dev_manifest: str | None = None
    voices: tuple[str, ...] = ("en-us", "en-gb")
    variants: tuple[str, ...] = ()  # () = synth's default
    vocabulary: tuple[str, ...] = ()  # closed vocabulary; () = synth's generated English
    words: tuple[int, int] = (3, 10)  # words per sentence
    natural_text: bool = False  # trained on `speechadapt data text` sentences: synthesize from its splits too

    def as_dict(self) -> dict:
        return asdict(self)


def _path_in(value) -> str | None:
    """A manifest path from a lineage value: a path, or "PATH (N utterances, ...)"."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value.split(" (", 1)[0].strip()


def _readable(path: str | None) -> str | None:
    if path and "://" not in path and Path(path).is_file():
        return str(Path(path).absolute())
    return None


def source_domain(lineage: dict, lexicon: list[str] | None = None) -> SourceDomain:
    """Find the source domain in a card's lineage: an adapted model's `source_domain`, pretrain's
    `config.train_manifest`/`dev_manifest` and `training_data`/`dev_data`, or keys named train_manifest,
    dev_manifest, voices, variants, vocabulary. Voices, variants and vocabulary not recorded are read from the
    source train (or dev) manifest when it is readable; without one, a shipped model's card (`corpus` summary,
    `speakers`) and its `lexicon` (a closed vocabulary of at most 2,000 words) stand in for it. A base whose
    training text came from `speechadapt data text` (lineage.text_sources) gets synthesized source speech from
    the same kind of sentences."""
    known = lineage.get("source_domain") if isinstance(lineage.get("source_domain"), dict) else {}
    config = lineage.get("config") if isinstance(lineage.get("config"), dict) else {}
    train = next((p for p in (_readable(_path_in(v)) for v in (known.get("train_manifest"), lineage.get("train_manifest"),
                                                                  config.get("train_manifest"), lineage.get("training_data"))) if p), None)
    dev = next((p for p in (_readable(_path_in(v)) for v in (known.get("dev_manifest"), lineage.get("dev_manifest"),
                                                                config.get("dev_manifest"), lineage.get("dev_data"))) if p), None)
    voices = tuple(known.get("voices") or lineage.get("voices") or ())
    variants = tuple(known.get("variants") or lineage.get("variants") or ())
    vocabulary = tuple(known.get("vocabulary") or lineage.get("vocabulary") or ())
    words = tuple(known.get("words") or ()) or None
    sample = train or dev
    if sample and not (voices and vocabulary and words):
        seen_voices, seen_variants, vocab, lengths = _manifest_profile(Path(sample))
        voices = voices or seen_voices
        variants = variants or seen_variants
        if not vocabulary and 0 < len(vocab) <= 2000:  # a closed vocabulary; larger ones: generated English
            vocabulary = tuple(sorted(vocab))
        if lengths and not words:
            lengths.sort()
            words = (max(1, lengths[len(lengths) // 20]), max(1, min(15, lengths[-1 - len(lengths) // 20])))
    corpus = (lineage.get("corpus") or {}).get("config") if isinstance(lineage.get("corpus"), dict) else None
    if not sample:
        if not variants and isinstance(lineage.get("speakers"), list):
            variants = tuple(sorted({sp.partition("+")[2] or "none" for sp in lineage["speakers"]}))
        if not words and isinstance(corpus, dict) and corpus.get("words"):
            words = tuple(int(w) for w in corpus["words"])
        if not vocabulary and lexicon and len(lexicon) <= 2000:
            vocabulary = tuple(lexicon)
    ts = lineage.get("text_sources")
    natural = bool(known.get("natural_text") or isinstance(ts, dict) and ts.get("sources"))
    if natural and not words and isinstance(ts, dict) and ts.get("words"):
        words = (int(ts["words"][0]), min(16, int(ts["words"][1])))  # long sentences: long, slow replay batches
    return SourceDomain(train, dev, voices or ("en-us", "en-gb"), variants, vocabulary, tuple(words or (3, 10)),
                        natural and not vocabulary)


def _manifest_profile(path: Path, limit: int = 5000) -> tuple[tuple, tuple, set, list]:
    """(voices, variants, words, words per line) of a synthesized manifest's first `limit` lines."""
    from speechadapt.asr.text import normalize_text

    voices: dict[str, None] = {}
    variants: dict[str, None] = {}
    vocab: set[str] = set()
    lengths: list[int] = []
    try:
        lines = path.read_text().splitlines()[:limit]
    except OSError:
        return (), (), set(), []
    for line in lines:
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if not isinstance(d, dict):
            continue
        speaker = str(d.get("speaker") or "")
        voice = str(d.get("voice") or speaker.partition("+")[0])
        if voice:
            voices.setdefault(voice)
            variant = speaker.partition("+")[2] if "+" in speaker else "none"
            variants.setdefault(variant)
        words = normalize_text(str(d.get("text") or "")).split()
        vocab.update(words)
        if words:
            lengths.append(len(words))
    return tuple(voices), tuple(variants), vocab, lengths


def _subset_manifest(src: Path, out_dir: Path, count: int, seed: int) -> Path:
    """A manifest of at most `count` lines of `src` (seeded sample, original order), audio paths absolute."""
    from speechadapt.asr.manifest import read_manifest

    utts = read_manifest(src)
    keep = sorted(random.Random(seed).sample(range(len(utts)), min(count, len(utts))))
    lines = [json.dumps({"audio": str(Path(utts[i].audio).absolute()), "text": utts[i].text, "speaker": utts[i].speaker})
             for i in keep]
    out = out_dir / "manifest.jsonl"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".manifest.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, out)
    return out


def _natural_sentences(domain: SourceDomain, path: Path, count: int, seed: int, split: str) -> bool:
    """`count` sentences of `data text`'s `split` into path; False when its Debian text packages are missing."""
    from speechadapt.training.corpus_text import TextConfig, build

    try:
        build(TextConfig(out=path, sentences=count, seed=seed, split=split, words=domain.words,
                         sources_json=path.with_name(path.name + ".sources.json")))
    except (ValueError, OSError) as e:
        print(f"no natural source text ({e}): synthesizing generated English instead", file=sys.stderr)
        return False
    return True


def synthesize_source(domain: SourceDomain, out_dir: Path, count: int, seed: int, split: str = "train") -> Path:
    """`count` utterances in the source voices and vocabulary into out_dir (reused when already complete); a
    base trained on `data text` sentences gets sentences of its `split` (dev: never trained on)."""
    from speechadapt.training.synth import SynthConfig, list_variants, list_voices, synthesize

    manifest, done = out_dir / "manifest.jsonl", out_dir / ".complete.json"
    recipe = {"domain": domain.as_dict(), "count": count, "seed": seed, "split": split}
    recipe = json.loads(json.dumps(recipe))  # as .complete.json holds it: lists, not tuples
    if manifest.is_file() and (read_json(done) or {}).get("recipe") == recipe:
        return manifest
    shutil.rmtree(out_dir, ignore_errors=True)
    known_voices = set(list_voices())
    voices = [v for v in domain.voices if v in known_voices] or ["en-us", "en-gb"]
    variants: list[str] | int = [v for v in domain.variants if v == "none" or v in set(list_variants())] or 4
    cfg = SynthConfig(out_dir=out_dir, voices=voices, variants=variants, count=count, seed=seed, quiet=True)
    if domain.vocabulary:
        rng = random.Random(seed)
        lo, hi = domain.words
        sentences = out_dir.parent / f".{out_dir.name}-sentences.txt"
        sentences.write_text("\n".join(" ".join(rng.choice(domain.vocabulary) for _ in range(rng.randint(lo, hi)))
                                       for _ in range(count)) + "\n")
        cfg, text = replace(cfg, sentences_file=sentences), f"its {len(domain.vocabulary)}-word vocabulary"
    elif domain.natural_text and _natural_sentences(
            domain, sentences := out_dir.parent / f".{out_dir.name}-sentences.txt", count, seed, split):
        cfg, text = replace(cfg, sentences_file=sentences), f"natural sentences (`data text`, {split} split)"
    else:
        cfg, text = replace(cfg, words=domain.words), "generated English"
    synthesize(cfg)
    write_json_atomic(done, {"recipe": recipe, "text": text, "voices": voices})
    return manifest


def synthesized_from(out_dir: Path) -> str:
    """What a `synthesize_source` set in out_dir says: its voices and where its sentences came from."""
    done = read_json(out_dir / ".complete.json") or {}
    return f"the base model's voices ({', '.join(done.get('voices', []))}) and {done.get('text', 'unknown text')}"


def source_dev_manifest(spec, domain: SourceDomain, run_dir: Path) -> tuple[Path, str]:
    """(manifest, how it was chosen) for the source dev set."""
    if spec.source_dev_manifest:
        return Path(spec.source_dev_manifest), "given in the spec"
    out = run_dir / "source_dev"
    if domain.dev_manifest:
        if not (out / "manifest.jsonl").is_file():
            _subset_manifest(Path(domain.dev_manifest), out, SOURCE_DEV_MAX, spec.seed)
        return out / "manifest.jsonl", f"up to {SOURCE_DEV_MAX} utterances of the base model's dev set {domain.dev_manifest}"
    manifest = synthesize_source(domain, out, SOURCE_DEV_UTTERANCES, seed=10_000 + spec.seed, split="dev")
    return manifest, f"{SOURCE_DEV_UTTERANCES} utterances synthesized in {synthesized_from(out)}"


def replay_manifest(spec, domain: SourceDomain, run_dir: Path, target_utterances: int) -> tuple[Path, str]:
    """(manifest, description) of source-domain utterances mixed into training batches."""
    out = run_dir / "source_replay"
    count = max(SOURCE_DEV_UTTERANCES, target_utterances)
    if domain.train_manifest:
        if not (out / "manifest.jsonl").is_file():
            _subset_manifest(Path(domain.train_manifest), out, max(200, 4 * target_utterances), spec.seed + 1)
        return out / "manifest.jsonl", f"the base model's training data {domain.train_manifest}"
    manifest = synthesize_source(domain, out, count, seed=20_000 + spec.seed)
    return manifest, f"{count} source utterances synthesized in {synthesized_from(out)}"


# ---------------------------------------------------------------------------------------------------------
# Training (Ray Train)


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs (pickled to the workers)."""

    base_path: str
    strategy: str
    train_manifest: str
    dev_manifest: str
    replay_manifest: str  # "" = no replay
    run_dir: str
    source_replay: float
    batch_size: int
    lr: float
    augment: bool
    max_epochs: int
    max_minutes: float
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    seed: int
    target_utterances: int
    fail_at_step: int = 0
    fail_rank: int = 1
    max_failures: int = 2
    log_level: str = "WARNING"
    speed_factors: tuple[float, ...] = (0.9, 1.1)
    source_dev_manifest: str = ""  # checked at every evaluation: checkpoints past `source_limit` are not kept
    source_limit: float = float("inf")  # base source dev WER + max_source_regression
    max_source_regression: float = 0.02
    architecture: str = "conformer-ctc"  # the base package's: picks the worker loop (`worker_loop_for`)
    store: str = ""  # where the base (and an adapter base's own base) resolves
    base_ref: str = ""  # "name@N" when the base is a stored model: adapter candidates name it as their base
    label: str = ""  # put before the workers' event messages ("trial 2: " in a search)

    def schedule(self) -> dict:
        """steps_per_epoch, total_steps, eval_every, warmup_steps: the same on every rank and every attempt."""
        per_batch = self.batch_size
        if self.source_replay > 0 and self.replay_manifest:
            per_batch = max(1, per_batch - min(max(1, round(per_batch * self.source_replay)), max(1, per_batch - 1)))
        steps_per_epoch = max(1, math.ceil(self.target_utterances / (per_batch * self.workers)))
        total = self.max_epochs * steps_per_epoch
        eval_every = min(200, steps_per_epoch * max(1, math.ceil(LOG_EVERY / steps_per_epoch)))
        return {"steps_per_epoch": steps_per_epoch, "total_steps": total, "eval_every": min(eval_every, total),
                "warmup_steps": max(1, min(50, total // 10))}


@dataclass(frozen=True)
class RayTarget:
    """What pretrain's Ray helpers (`_local_head_wanted`, `_connect`) read from a config."""

    ray_address: str | None
    storage_path: str
    workers: int
    cpus_per_worker: float


def _train_config(job: TrainJob, model_cfg, features):
    from speechadapt.training.loop import TrainConfig

    s = job.schedule()
    masks = 2 if job.augment else 0
    return TrainConfig(model=model_cfg, features=features, max_steps=s["total_steps"], max_minutes=job.max_minutes,
                       batch_utterances=job.batch_size, replay_share=job.source_replay if job.replay_manifest else 0.0,
                       learning_rate=job.lr, warmup_steps=s["warmup_steps"], eval_every=s["eval_every"],
                       time_masks=masks, freq_masks=masks, seed=job.seed)


def _load_examples(manifest: str, tokenizer, features, speed_factors=()) -> list:
    """Examples of a manifest, plus speed-perturbed copies (one per factor) when given."""
    from speechadapt.asr.audio import load_audio
    from speechadapt.asr.features import fbank
    from speechadapt.asr.manifest import read_manifest
    from speechadapt.asr.text import normalize_text
    from speechadapt.training.augment import speed_perturb
    from speechadapt.training.loop import Example

    out = []
    for u in read_manifest(manifest):
        text = normalize_text(u.text)
        targets = tokenizer.encode(text)
        samples = load_audio(u.audio, features.sample_rate)
        for factor in (1.0, *speed_factors):
            x = samples if factor == 1.0 else speed_perturb(samples, features.sample_rate, factor)
            out.append(Example(fbank(x, features), targets, text))
    return out


def manifest_words(manifest: str) -> int:
    """Words in a manifest's transcripts, as scored (normalised)."""
    from speechadapt.asr.manifest import read_manifest
    from speechadapt.asr.text import normalize_text

    return sum(len(normalize_text(u.text).split()) for u in read_manifest(manifest))


def source_note(source_wer: float | None, limit: float) -> str:
    """', source dev WER 12.0% (within the limit 14.0%)' for a train event message; '' when not measured."""
    if source_wer is None:
        return ""
    return f", source dev WER {source_wer:.1%} ({'within' if source_wer <= limit + 1e-9 else 'over'} the limit {limit:.1%})"


def best_note(best_wer: float, best_step: int) -> str:
    return f" (best {best_wer:.1%} at step {best_step})" if math.isfinite(best_wer) else \
        " (no checkpoint within the source limit yet)"


def choose_defaults(spec, architecture: str, target_seconds: float):
    """The job's `auto` settings made concrete: (spec, notes saying what was chosen and why).

    strategy: conformer-CTC bases train LoRA adapters at every size (the best of the three at 1-10 minutes in
    bench/transfer_curve.py); Whisper bases train the decoder (`head`, the encoder frozen) below 10 minutes of
    target audio and LoRA adapters above. source_replay: 0.5 of each batch (conformer-CTC), 0.25 (Whisper)."""
    notes = []
    strategy, replay = spec.strategy, spec.source_replay
    minutes = target_seconds / 60
    if strategy == "auto":
        if architecture == "whisper":
            strategy = "head" if minutes < 10 else "adapters"
            why = f"a Whisper base with {minutes:.1f} min of target audio: " + (
                "the decoder only, the encoder kept" if strategy == "head" else "LoRA on the attention projections")
        else:
            strategy, why = "adapters", f"a {architecture} base: LoRA adapters, the best at every size measured"
        notes.append(f"strategy auto -> {strategy} ({why})")
    if replay is None:
        replay = 0.25 if architecture == "whisper" else 0.5
        notes.append(f"source_replay auto -> {replay:g} of each batch from the source domain")
    return replace(spec, strategy=strategy, source_replay=replay), notes


def _finite(x: float, digits: int = 4) -> float | None:
    """A number for JSON reports: rounded, None when NaN or infinite (a diverged loss)."""
    return round(float(x), digits) if math.isfinite(x) else None


def _base_net(job: TrainJob):
    """A freshly loaded base model prepared for the job's strategy: (net, plan, tokenizer, features)."""
    import torch

    from speechadapt.asr.package import load_package
    from speechadapt.training.strategies import prepare

    _, net, tokenizer, features = load_package(job.base_path)
    torch.manual_seed(job.seed)  # the same LoRA initialisation on every rank
    plan = prepare(net, job.strategy)
    return net.train(), plan, tokenizer, features


def _lexicon_for(base_path: str, examples) -> tuple[dict, object]:
    """({lexicon, decoding}, lm): the adapted model's decoding, i.e. the base's lexicon plus the target's words (a
    base without a lexicon keeps decoding characters) and the base's beam options, and the base's word LM (None
    without one), which the candidate inherits (carry_lm): checkpoints are scored during training with it, as the
    gate will score them."""
    from speechadapt.asr.package import lexicon_from_texts, read_card, read_lexicon, read_package_lm

    card = read_card(base_path)
    words = read_lexicon(base_path, card)
    if words is not None:
        words = sorted(set(words) | set(lexicon_from_texts(e.text for e in examples)))
    return {"lexicon": words, "decoding": card.decoding}, read_package_lm(base_path, card)


def _worker_loop(config: dict) -> dict | None:
    import torch
    import torch.distributed as dist
    import ray.train
    import ray.train.torch

    from speechadapt.asr.beam import BeamDecoder, model_beam_config
    from speechadapt.training.loop import Trainer, lr_at
    from speechadapt.training.pretrain import (_quiet_reports, export_package, rank_gather, report_checkpoint,
                                               restore_checkpoint)
    from speechadapt.training.strategies import merge

    job: TrainJob = config["job"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    distributed = world > 1 and dist.is_available() and dist.is_initialized()
    torch.set_num_threads(max(1, int(job.cpus_per_worker)))
    _quiet_reports(job.log_level)
    run_dir = Path(job.run_dir)

    gather = rank_gather(world)

    say = worker_say(job, rank)

    t_load = time.monotonic()
    net, plan, tokenizer, features = _base_net(job)
    tc = _train_config(job, net.cfg, features)
    schedule = job.schedule()
    total = schedule["total_steps"]
    train = _load_examples(job.train_manifest, tokenizer, features, job.speed_factors if job.augment else ())
    dev = _load_examples(job.dev_manifest, tokenizer, features)
    replay = _load_examples(job.replay_manifest, tokenizer, features) if job.replay_manifest else []
    model = ray.train.torch.prepare_model(net)  # moves net to the device; DDP when world > 1
    decoding, lm = _lexicon_for(job.base_path, train)  # decoding: what the candidate's card gets
    decoder = None if decoding["lexicon"] is None and lm is None else \
        BeamDecoder(tokenizer, decoding["lexicon"], model_beam_config(decoding["decoding"], lm), lm=lm)
    source_dev = _load_examples(job.source_dev_manifest, tokenizer, features) if job.source_dev_manifest else []
    trainer = Trainer(tc, net, tokenizer, train, dev, model=model, rank=rank, world_size=world,
                      param_groups=plan.param_groups, replay=replay, decoder=decoder, gather=gather,
                      source_dev=source_dev, source_limit=job.source_limit)
    torch.manual_seed(job.seed + 1009 * (rank + 1))  # per-rank dropout and SpecAugment streams
    trainer.gen.manual_seed(job.seed + 1009 * (rank + 1))
    say(total_steps=total, message=f"{world} workers: {job.target_utterances} target utterances"
        f"{f' (+{len(train) - job.target_utterances} speed-perturbed)' if job.augment else ''}, {len(dev)} dev, "
        f"{len(replay)} replay; {plan.describe()}; {schedule['steps_per_epoch']} steps/epoch, "
        f"dev WER every {schedule['eval_every']} steps; loaded in {time.monotonic() - t_load:.1f} s")

    meta = {"restarts": 0, "resumed_from_steps": [], "train_seconds": 0.0, "best_step": 0}
    restored = restore_checkpoint(trainer, rank, world)
    if restored is not None:
        meta = restored
        say(step=trainer.step_no, total_steps=total, dev_wer=trainer.best_wer,
            message=f"resumed from the checkpoint at step {trainer.step_no} (restart {meta['restarts']})")

    marker = run_dir / TRAIN_RUN / FAULT_MARKER
    t_attempt, seconds_before, steps_before = time.monotonic(), meta["train_seconds"], trainer.step_no
    losses: list[float] = []
    while trainer.step_no < total:
        losses.append(trainer.step())
        step = trainer.step_no
        if job.fail_at_step and step == job.fail_at_step and rank == job.fail_rank % world and not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"rank {rank} exited at step {step}\n")
            say(step=step, total_steps=total, message=f"fault injection: rank {rank} exits after step {step}")
            time.sleep(3.0)  # let the controller take in the last report, then die like a lost node would
            os._exit(1)
        evaluate = step % tc.eval_every == 0 or step == total
        if step % LOG_EVERY and not evaluate:
            continue
        train_seconds = seconds_before + time.monotonic() - t_attempt
        flags = torch.tensor([sum(losses), len(losses), float(train_seconds > job.max_minutes * 60)])
        if distributed:
            flags = flags.to(net.feat_mean.device)
            dist.all_reduce(flags)  # mean loss over ranks; any rank over the time budget stops all
        loss = float(flags[0] / max(1.0, float(flags[1])))
        out_of_time = bool(flags[2] > 0)
        losses.clear()
        per_step = (time.monotonic() - t_attempt) / max(1, step - steps_before)
        eta = min((total - step) * per_step, max(0.0, job.max_minutes * 60 - train_seconds))
        trainer.history.append({"event": "train", "step": step, "loss": _finite(loss), "lr": lr_at(step - 1, tc)})
        if not (evaluate or out_of_time):
            say(step=step, total_steps=total, loss=loss, eta_s=eta, message=f"epoch {math.ceil(step / schedule['steps_per_epoch'])}")
            continue
        previous_best = trainer.best_wer
        wer = trainer.evaluate()
        if trainer.best_wer < previous_best:  # this checkpoint was kept (better, and within the source limit)
            meta["best_step"] = step
        meta["train_seconds"] = train_seconds
        ev = {"event": "eval", "step": step, "loss": _finite(loss), "dev_wer": wer, "best_dev_wer": trainer.best_wer,
              "elapsed_s": round(train_seconds, 1)}
        trainer.history.append(ev)
        src = trainer.last_source_wer
        if src is not None:
            ev["source_dev_wer"] = src
        say(step=step, total_steps=total, loss=loss, dev_wer=wer, eta_s=0.0 if out_of_time else eta,
            message=f"target dev WER {wer:.1%}" + (source_note(src, job.source_limit)) + best_note(trainer.best_wer, meta["best_step"]))
        rng_states = gather({"gen": trainer.gen.get_state(), "torch": torch.get_rng_state()})
        metrics = {"step": step, "loss": _finite(loss), "dev_wer": wer, "best_dev_wer": trainer.best_wer}
        report_checkpoint(rank, metrics, step, {"trainer": trainer.state_dict(), "rng": rng_states, "meta": meta})
        if out_of_time:
            say(step=step, total_steps=total, message=f"time budget of {job.max_minutes:g} min used up at step {step}")
            break

    if rank != 0:
        return None
    final, _, _, _ = _base_net(job)  # a plain copy with the same structure; the best state, adapters merged
    final.load_state_dict({k: v.cpu() for k, v in (trainer.best_state or net.state_dict()).items()})
    merge(final)
    export_package(run_dir / CANDIDATE, final.eval(), tokenizer, features, overwrite=True, name="candidate",
                   metrics={"dev_wer": trainer.best_wer}, **decoding)
    carry_lm(job.base_path, run_dir / CANDIDATE)
    return {"steps": trainer.step_no, "total_steps": total, "best_step": meta["best_step"], "best_dev_wer": trainer.best_wer,
            "train_seconds": round(meta["train_seconds"], 1), "restarts": meta["restarts"],
            "resumed_from_steps": meta["resumed_from_steps"], "workers": world,
            "trained_parameters": plan.trained_parameters, "total_parameters": plan.total_parameters,
            "lora_rank": plan.lora_rank, "train_examples": len(train), "replay_examples": len(replay),
            "schedule": schedule, "history": trainer.history}


def worker_loop_for(architecture: str):
    """The Ray Train worker loop that adapts a base of this architecture."""
    if architecture == "whisper":
        from speechadapt.training.whisper_train import worker_loop

        return worker_loop
    return _worker_loop


def default_lr(strategy: str, architecture: str) -> float:
    """A strategy's default learning rate for a base architecture."""
    if architecture == "whisper":
        from speechadapt.training.whisper_train import DEFAULT_LR

        return DEFAULT_LR[strategy]
    from speechadapt.jobspec import DEFAULT_LR

    return DEFAULT_LR[strategy]


def _learning_rate(spec, architecture: str) -> float:
    """The spec's learning rate, else the strategy's default for the architecture."""
    return spec.learning_rate if spec.learning_rate is not None else default_lr(spec.strategy, architecture)


@contextlib.contextmanager
def on_ray(job: TrainJob, ray_address: str | None):
    """Connected to Ray for the block: a local head on 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)
    unless `ray_address`/$RAY_ADDRESS names a cluster or this process is already a Ray driver (pretrain's
    helpers); SIGTERM aborts what runs (`_on_sigterm`)."""
    from speechadapt.training.pretrain import _connect, _local_head_wanted, _loopback_only

    target = RayTarget(ray_address, job.run_dir, job.workers, job.cpus_per_worker)
    local = _local_head_wanted(target)
    undo_loopback = _loopback_only() if local else None

    import ray

    shutdown, temp_to_remove = _connect(target, local)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)  # ray.init replaced it with sys.exit(15), which aborts mid-get
    sigint = signal.getsignal(signal.SIGINT)  # fit() installs Ray Train's abort-on-Ctrl-C handler; ours comes back after
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)
        if shutdown:
            ray.shutdown()
        if temp_to_remove:
            shutil.rmtree(temp_to_remove, ignore_errors=True)
        if undo_loopback:
            undo_loopback()


def fit(job: TrainJob, callbacks: tuple | list = ()) -> dict:
    """Fit the TorchTrainer of `job` (resuming a run in its RUN_DIR/train) on the connected cluster; rank 0's
    summary. `callbacks`: Ray Train callbacks (a search trial's TuneReportCallback)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2.api.config import LoggingConfig

    use_gpu = job.gpus_per_worker > 0
    resources = {"CPU": job.cpus_per_worker, **({"GPU": job.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        worker_loop_for(job.architecture),
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=TRAIN_RUN,
            storage_path=job.run_dir,
            failure_config=FailureConfig(max_failures=job.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            logging_config=LoggingConfig(log_level=job.log_level),
            callbacks=list(callbacks),
        ),
    )
    summary = trainer.fit().return_value
    time.sleep(1.0)  # let Ray forward the workers' last event lines before anything else is printed
    if not isinstance(summary, dict):
        raise RuntimeError(f"rank 0 returned no training summary (got {summary!r}); see {job.run_dir}/{TRAIN_RUN}")
    return summary


def run_training(job: TrainJob, ray_address: str | None) -> dict:
    """Fit the TorchTrainer (resuming a run in RUN_DIR/train); returns rank 0's summary."""
    with on_ray(job, ray_address):
        return fit(job)


# ---------------------------------------------------------------------------------------------------------
# Gate, publish, report


@dataclass(frozen=True)
class Decision:
    promoted: bool
    reason: str


def decide(metrics: dict, max_source_regression: float) -> Decision:
    """Promote only if the target improves and the source does not regress beyond the limit (absolute WER)."""
    bt, at = metrics["base_target_wer"], metrics["adapted_target_wer"]
    bs, as_ = metrics["base_source_wer"], metrics["adapted_source_wer"]
    rise = as_ - bs
    if not at < bt:
        return Decision(False, f"negative transfer: target dev WER {at:.1%} >= base {bt:.1%}")
    if rise > max_source_regression + 1e-9:
        return Decision(False, f"forgetting: source dev WER rose {100 * rise:.1f} points "
                               f"(limit {100 * max_source_regression:.1f}); target dev WER {bt:.1%} -> {at:.1%}")
    return Decision(True, f"target dev WER {bt:.1%} -> {at:.1%}; source dev WER {bs:.1%} -> {as_:.1%} "
                          f"(limit +{100 * max_source_regression:.1f} points)")


def find_published(store: Path, name: str, run_dir: Path) -> int:
    """The version this run already published (lineage.run == run_dir), or 0."""
    from speechadapt.asr.package import CARD

    for v in store_versions(store / name):
        card = read_json(store / name / str(v) / CARD)
        if card and (card.get("lineage") or {}).get("run") == str(run_dir):
            return v
    return 0


def publish(store: Path, name: str, net, tokenizer, features, **card) -> int:
    """Write a package as STORE/<name>/<N>/ atomically (speechadapt.asr.store.publish). Returns N."""
    from speechadapt.asr.package import save_package
    from speechadapt.asr.store import publish as publish_package

    return publish_package(store, name, lambda tmp, version: save_package(
        tmp, net, tokenizer, features, name=name, version=version, **card))


def carry_lm(base_path: str | Path, candidate_dir: Path) -> bool:
    """A base whose package carries a word LM (`lm/`) passes it to the candidate, so that the candidate is
    evaluated (against a base decoded with that LM) and published with it. Returns whether it had one."""
    from speechadapt.asr.package import LM_DIR, read_card
    from speechadapt.lm import INFO, attach

    if f"{LM_DIR}/{INFO}" not in read_card(base_path).files:
        return False
    attach(candidate_dir, Path(base_path) / LM_DIR)
    return True


def publish_candidate(store: Path, name: str, candidate_dir: Path, **updates) -> int:
    """Publish the candidate package (any architecture) as STORE/<name>/<N>/: its files copied, its card
    renamed and updated (`updates`: description, lineage, metrics...). Atomic (speechadapt.asr.store.publish)."""
    from speechadapt.asr.package import read_card, write_card
    from speechadapt.asr.store import publish as publish_package

    card = read_card(candidate_dir)

    def write(tmp: Path, version: int) -> None:
        tmp.mkdir(parents=True)
        for f in card.files:
            (tmp / f).parent.mkdir(exist_ok=True)  # an attached LM lives in lm/
            shutil.copyfile(candidate_dir / f, tmp / f)
        fields_ = {k: v for k, v in asdict(card).items() if k not in ("files", "created")}
        fields_.update(updates, name=name, version=version)
        write_card(tmp, list(card.files), **fields_)

    return publish_package(store, name, write)


def write_report(report_dir: Path, content: dict, history: list[dict], base_target_wer: float) -> None:
    """metrics.json and training.png (loss and dev WER over steps), each written atomically."""
    write_json_atomic(report_dir / "metrics.json", content)
    train = [h for h in history if h.get("event") == "train"]
    evals = [h for h in history if h.get("event") == "eval"]
    if not train and not evals:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot([h["step"] for h in train], [h["loss"] for h in train], color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot([h["step"] for h in evals], [100 * h["dev_wer"] for h in evals], "o-", color="tab:red", label="target dev WER")
    if base_target_wer >= 0:
        ax2.axhline(100 * base_target_wer, color="tab:red", linestyle="--", linewidth=1, label="base target dev WER")
    ax2.set_ylabel("target dev WER (%)", color="tab:red")
    ax2.set_ylim(0, 110 * max([h["dev_wer"] for h in evals] + [base_target_wer, 0.01]) + 1)
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right")
    ax.set_title(f"{content.get('spec', {}).get('name', '')}: {content.get('spec', {}).get('strategy', '')}")
    save_png(fig, report_dir / "training.png")


def save_png(fig, path: Path) -> None:
    """Write a matplotlib figure as PNG atomically (a temp file renamed over `path`) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------------
# The job


@dataclass(frozen=True)
class JobArgs:
    spec_path: Path
    store: Path
    run_dir: Path
    job_id: str = ""
    ray_address: str | None = None
    cpus_per_worker: float = 1.0
    data_roots: tuple[str, ...] = ()  # the only folders the job may read data from; (): no restriction


@dataclass
class JobContext:
    """What the phases hand on (and the report records)."""

    base_ref: str = ""
    base_path: str = ""
    domain: dict = field(default_factory=dict)
    source_dev: str = ""
    source_dev_origin: str = ""
    baseline: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)


def domain_lm_phase(spec, state: JobContext, run_dir: Path, characters: tuple[str, ...], source_dev: Path) -> dict:
    """Build (or mix) the domain LM, its weight chosen by decoding the candidate (training/domain_lm.py), attach it
    to the candidate, and measure the base with it on target dev.
    Returns the report's "domain_lm": the LM summary + base_target_wer_domain_lm."""
    from speechadapt.asr.inference import load_model
    from speechadapt.lm import attach
    from speechadapt.training.domain_lm import choose_job_lm, with_lm

    t0 = time.monotonic()
    emit(event("evaluate", message=f"building the domain LM from {len(spec.domain_text)} text file(s)"))
    lm_dir = run_dir / "domain_lm"
    limit = state.baseline["base_source_wer"] + spec.max_source_regression
    section = choose_job_lm(spec.domain_text, state.base_path, run_dir / CANDIDATE, spec.dev_manifest, str(source_dev),
                            limit, characters, lm_dir, lambda note: emit(event("evaluate", message=note)))
    ppl = section["dev_perplexity"]
    if section["mode"] == "mixed":
        chosen = (f"domain LM mixed into the base's LM at weight {section['weight']:g}" if section["weight"] else
                  "domain LM not used (the base's LM alone decodes best within the source limit)")
        emit(event("evaluate", message=f"{chosen}: chosen by decoding target and source dev (the perplexity weight "
                   f"{section['perplexity_weight']:g}: target dev perplexity base LM {ppl['base_lm']:.1f}, domain "
                   f"text alone {ppl['domain_lm']:.1f}, mixed {ppl['mixed']:.1f}; {time.monotonic() - t0:.0f} s)"))
    else:
        emit(event("evaluate", message=f"domain LM built (the base has none): target dev perplexity "
                   f"{ppl['domain_lm']:.1f} ({time.monotonic() - t0:.0f} s)"))
    attach(run_dir / CANDIDATE, lm_dir)
    base_lm = load_model(with_lm(Path(state.base_path), lm_dir, run_dir / "base_domain_lm"))
    wer = _measure(base_lm, Path(spec.dev_manifest), "evaluate", "base model with the domain LM: target dev")
    return {**section, "base_target_wer": state.baseline["base_target_wer"], "base_target_wer_domain_lm": wer}


def _measure(model, manifest: Path, phase: str, what: str, step: int = 0) -> float:
    from speechadapt.asr.evaluation import evaluate

    t0 = time.monotonic()
    result = evaluate(model, manifest)
    emit(event(phase, step=step, dev_wer=result.wer, message=f"{what} WER {result.wer:.1%} on {result.utterances} "
                                                            f"utterances ({time.monotonic() - t0:.1f} s)"))
    return result.wer


def _load_spec(path: Path):
    from speechadapt.jobspec import JobSpec, JobSpecError

    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise JobInputError([f"cannot read the spec {path}: {e.strerror or e}"]) from None
    except ValueError as e:
        raise JobInputError([f"{path} is not valid JSON: {e}"]) from None
    try:
        spec = JobSpec.from_dict(data, str(path))
    except JobSpecError as e:
        raise JobInputError(e.problems) from None
    uris = [k for k in ("train_manifest", "dev_manifest", "source_dev_manifest") if "://" in getattr(spec, k)]
    if uris:
        raise JobInputError([f"{k} {getattr(spec, k)!r}: give a local path (resolve data:// URIs before submitting)" for k in uris])
    return spec.resolve_paths(Path.cwd())


def run_job(args: JobArgs) -> int:
    """All phases; returns the exit code (events on stdout)."""
    from speechadapt.asr.manifest import check_job_data, check_manifest, read_manifest
    from speechadapt.asr.package import PackageError, data_tokenizer, read_card
    from speechadapt.asr.store import ModelNotFound, resolve_path_or_ref

    run_dir, store = args.run_dir, args.store
    job_id = args.job_id or run_dir.name
    run_dir.mkdir(parents=True, exist_ok=True)
    done = read_json(run_dir / RESULT_FILE)
    if done is not None:
        emit(event("result", message=f"already finished: {done.get('reason', '')}", result=done))
        return EXIT_OK

    # -- validate
    spec = _load_spec(args.spec_path)
    emit(event("validate", message=f"checking the data of job {job_id} ({spec.strategy} on {spec.base_model})"))
    if args.data_roots:  # the server's --data-root folders and its upload store (asr/data_access.py)
        from speechadapt.asr.data_access import UPLOAD_HINT, access_problems, real_roots

        roots = real_roots(args.data_roots)
        denied = access_problems({**{k: getattr(spec, k) for k in ("train_manifest", "dev_manifest", "source_dev_manifest")},
                                  **{f"domain_text[{i}]": v for i, v in enumerate(spec.domain_text)}}, roots)
        if denied:
            raise JobInputError(denied + [f"the job may read only files under {', '.join(roots)}: {UPLOAD_HINT}"])
    try:
        ref = resolve_path_or_ref(spec.base_model, store)
        card = read_card(ref.path)
        tokenizer = data_tokenizer(card)
    except (ModelNotFound, PackageError, ValueError) as e:
        raise JobInputError([f"base_model {spec.base_model!r}: {e}"]) from None
    problems = check_job_data(spec, tokenizer)
    if spec.domain_text and (card.architecture == "whisper" or card.tokenizer.get("type") != "char"):
        problems.append(f"domain_text needs a CTC base with a lexicon decoder: base_model {spec.base_model!r} is "
                        f"{card.architecture}; drop domain_text or adapt a conformer-CTC base such as base-en")
    problems += [f"domain_text {v}: not a readable file" for v in spec.domain_text if not Path(v).is_file()]
    if problems:
        raise JobInputError(problems)
    target_utterances = len(read_manifest(spec.train_manifest))
    target_seconds = check_manifest(spec.train_manifest, tokenizer).seconds
    spec, chosen = choose_defaults(spec, card.architecture, target_seconds)
    for note in chosen:
        emit(event("validate", message=note))
    state = JobContext(base_ref=str(ref), base_path=str(ref.path.absolute()))
    from speechadapt.asr.package import read_lexicon

    domain = source_domain(card.lineage, read_lexicon(ref.path, card) if tokenizer is not None else None)
    state.domain = domain.as_dict()
    emit(event("validate", message=f"data ok: {target_utterances} target train utterances; base {ref}"))

    # -- baseline
    source_dev, state.source_dev_origin = source_dev_manifest(spec, domain, run_dir)
    state.source_dev = str(source_dev)
    emit(event("baseline", message=f"source dev set: {state.source_dev_origin}"))
    key = {"base_model": state.base_ref, "base_path": state.base_path, "target_dev": spec.dev_manifest,
           "target_train": spec.train_manifest, "source_dev": state.source_dev}
    baseline = read_json(run_dir / BASELINE_FILE)
    if baseline is None or "transfer" not in baseline or any(baseline.get(k) != v for k, v in key.items()):
        from speechadapt.asr.inference import load_model

        base = load_model(ref.path)
        bt = _measure(base, Path(spec.dev_manifest), "baseline", "base model: target dev")
        bs = _measure(base, source_dev, "baseline", "base model: source dev")
        rel = relatedness.measure(bt, bs, Path(spec.train_manifest), source_dev, target_seconds,
                                  dev_words=manifest_words(spec.dev_manifest))
        baseline = {**key, "base_target_wer": bt, "base_source_wer": bs, "relatedness": rel.ratio,
                    "transfer": rel.to_dict()}
        write_json_atomic(run_dir / BASELINE_FILE, baseline)
    else:
        emit(event("baseline", dev_wer=baseline["base_target_wer"], message=f"reusing {run_dir / BASELINE_FILE}"))
    state.baseline = baseline
    rel = relatedness.Relatedness(**{k: v for k, v in baseline["transfer"].items() if k != "far"})
    emit(event("baseline", message=rel.summary()))
    for warning in rel.warnings:
        emit(event("baseline", message=f"warning: {warning}"))

    # -- train
    fail_at = os.environ.get(FAIL_ENV, "").strip()
    job = TrainJob(
        base_path=state.base_path, strategy=spec.strategy, train_manifest=spec.train_manifest,
        dev_manifest=spec.dev_manifest, replay_manifest="", run_dir=str(run_dir.absolute()),
        source_replay=spec.source_replay, batch_size=spec.batch_size, lr=_learning_rate(spec, card.architecture),
        augment=spec.augment, architecture=card.architecture,
        max_epochs=spec.max_epochs, max_minutes=spec.max_minutes, workers=spec.workers,
        cpus_per_worker=args.cpus_per_worker, gpus_per_worker=spec.gpus_per_worker, seed=spec.seed,
        target_utterances=target_utterances, fail_at_step=int(fail_at) if fail_at.isdigit() else 0,
        source_dev_manifest=state.source_dev, store=str(Path(store).absolute()),
        base_ref=state.base_ref if ref.source != "path" else "",
        source_limit=baseline["base_source_wer"] + spec.max_source_regression,
        max_source_regression=spec.max_source_regression)
    trials = search.design(spec.search, card.architecture, spec) if spec.search is not None else []
    if spec.source_replay > 0 or any(t["source_replay"] > 0 for t in trials):
        replay, origin = replay_manifest(spec, domain, run_dir, target_utterances)
        job = replace(job, replay_manifest=str(replay))
        emit(event("train", message=f"source replay {spec.source_replay:.0%} of each batch from {origin}"
                   if not trials else f"source replay from {origin}"))
    summary = read_json(run_dir / SUMMARY_FILE)
    if summary is None or not (run_dir / CANDIDATE / "model.json").is_file():
        if trials:
            summary = search.run_search(job, trials, spec.search, args.ray_address,
                                        lambda note: emit(event("train", message=note)))
            best = summary["search"]["best"]
            emit(event("train", dev_wer=summary["best_dev_wer"], message=f"search done: best trial {best + 1} ("
                       f"{trials[best]['strategy']}, lr {trials[best]['lr']:g}, replay {trials[best]['source_replay']:g})"))
        else:
            emit(event("train", total_steps=job.schedule()["total_steps"], message=f"starting Ray Train: {spec.workers} "
                       f"workers, {spec.strategy}, lr {job.lr:g}, up to {spec.max_epochs} epochs / {spec.max_minutes:g} min"))
            summary = run_training(job, args.ray_address)
        write_json_atomic(run_dir / SUMMARY_FILE, summary)
    if trials:  # what the published model was trained with: the best trial's settings
        t = trials[summary["search"]["best"]]
        spec = replace(spec, strategy=t["strategy"], learning_rate=t["lr"], source_replay=t["source_replay"])
    state.training = summary
    emit(event("train", step=summary["steps"], total_steps=summary["total_steps"], dev_wer=summary["best_dev_wer"],
               message=f"training done: {summary['steps']} steps, best target dev WER {summary['best_dev_wer']:.1%} at "
                       f"step {summary['best_step']}" + (f", {summary['restarts']} restart(s)" if summary["restarts"] else "")))

    # -- evaluate
    from speechadapt.asr.inference import load_model

    steps = int(summary.get("steps", 0))
    lm_report = (domain_lm_phase(spec, state, run_dir, tuple(card.tokenizer["tokens"][2:]), source_dev)
                 if spec.domain_text else None)
    candidate = load_model(run_dir / CANDIDATE, store=store)
    at = _measure(candidate, Path(spec.dev_manifest), "evaluate", "adapted model: target dev", steps)
    as_ = _measure(candidate, source_dev, "evaluate", "adapted model: source dev", steps)
    metrics = {"base_target_wer": baseline["base_target_wer"], "adapted_target_wer": at,
               "base_source_wer": baseline["base_source_wer"], "adapted_source_wer": as_,
               "relatedness": baseline["relatedness"], "trained_parameters": int(summary["trained_parameters"]),
               "total_parameters": int(summary["total_parameters"])}
    if lm_report is not None:
        metrics.update(base_target_wer_domain_lm=lm_report["base_target_wer_domain_lm"],
                       domain_lm_weight=lm_report["weight"],
                       domain_lm_dev_perplexity=lm_report["dev_perplexity"].get(  # "chosen": a mixed LM
                           "chosen", lm_report["dev_perplexity"]["domain_lm"]))
    decision = decide(metrics, spec.max_source_regression)

    # -- publish
    version = 0
    if decision.promoted:
        emit(event("publish", message=f"publishing {spec.name} to {store}"))
        version = find_published(store, spec.name, run_dir.absolute())
        if not version:
            from importlib.metadata import version as package_version

            import torch

            history = summary.get("history", [])
            lineage = {
                "strategy": spec.strategy, "base_model": state.base_ref, "job_id": job_id, "spec": spec.to_dict(),
                "metrics": metrics, "decision": decision.reason, "source_domain": state.domain,
                "source_dev": f"{state.source_dev} ({state.source_dev_origin})",
                "training_data": f"{spec.train_manifest} ({target_utterances} utterances)", "dev_data": spec.dev_manifest,
                "steps": steps, "best_step": summary.get("best_step"), "restarts": summary.get("restarts"),
                "workers": summary.get("workers"), "lora_rank": summary.get("lora_rank"),
                "train_seconds": summary.get("train_seconds"), "run": str(run_dir.absolute()),
                "software": f"torch {torch.__version__}, ray {package_version('ray')}",
                "history": [h for h in history if h.get("event") != "train"],
            }
            version = publish_candidate(store, spec.name, run_dir / CANDIDATE,
                              description=f"{spec.strategy} adaptation of {state.base_ref} (job {job_id})",
                              lineage=lineage,
                              metrics={"dev_wer": at, "source_dev_wer": as_, "base_dev_wer": metrics["base_target_wer"],
                                       "base_source_dev_wer": metrics["base_source_wer"], "relatedness": metrics["relatedness"]})
        emit(event("publish", message=f"published {spec.name}@{version}"))

    # -- report and result
    report_dir = run_dir / "report"
    result = {"promoted": decision.promoted, "reason": decision.reason, "model": spec.name if decision.promoted else "",
              "version": version, "metrics": metrics, "report_dir": str(report_dir.absolute())}
    report = {"job_id": job_id, "spec": spec.to_dict(), "base_model": state.base_ref, "metrics": metrics,
              "decision": {"promoted": decision.promoted, "reason": decision.reason, "model": result["model"], "version": version},
              "source_dev": {"manifest": state.source_dev, "origin": state.source_dev_origin}, "source_domain": state.domain,
              "relatedness": baseline["transfer"],
              "training": {k: v for k, v in summary.items() if k not in ("history", "search")}, "history": summary.get("history", [])}
    if "search" in summary:
        report["search"] = summary["search"]
    if lm_report is not None:
        report["domain_lm"] = lm_report
    write_report(report_dir, report, summary.get("history", []), metrics["base_target_wer"])
    if "search" in summary:
        search.write_plot(report_dir / "search.png", summary["search"]["trials"], metrics["base_target_wer"],
                          metrics["base_source_wer"], job.source_limit, summary["search"]["best"])
    write_json_atomic(run_dir / RESULT_FILE, result)
    emit(event("result", step=steps, total_steps=int(summary.get("total_steps", steps)), dev_wer=at,
               message=decision.reason, result=result))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------------------
# CLI


def _on_sigterm(signum, frame) -> None:
    """A stopped Ray job: abort a running TorchTrainer (Ray Train's SIGINT handler is installed only while
    `fit()` runs), then unwind (Cancelled): `finally` blocks shut Ray down and remove temp folders."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        try:
            handler(signal.SIGINT, frame)  # Ray Train's: asks the controller to abort the run
        except BaseException:
            pass
    raise Cancelled()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m speechadapt.training.adapt", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, type=Path, help="JobSpec.to_dict() as JSON (local manifest paths)")
    ap.add_argument("--store", required=True, type=Path, help="the model store: base model in, new version out")
    ap.add_argument("--run-dir", required=True, type=Path, help="this job's folder: checkpoints, report, result.json")
    ap.add_argument("--job-id", default="", help="recorded in the card's lineage (default: the run dir's name)")
    ap.add_argument("--ray-address", default=None, help="Ray cluster (default: $RAY_ADDRESS, else a local head on 127.0.0.1)")
    ap.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per training worker (default 1)")
    ap.add_argument("--data-root", action="append", default=[], metavar="DIR",
                    help="read manifests and audio only under DIR (repeatable; the server passes its --data-root "
                         "folders and its upload store); default: anywhere")
    a = ap.parse_args(argv)
    if not a.cpus_per_worker > 0:
        ap.error("--cpus-per-worker must be > 0")
    try:
        sys.stdout.reconfigure(line_buffering=True)  # events reach a pipe or the Ray job log at once
    except AttributeError:
        pass
    # Event lines from workers must never be folded by Ray's log deduplication (read when ray is imported).
    os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", EVENT_MARKER.strip())
    signal.signal(signal.SIGTERM, _on_sigterm)
    args = JobArgs(a.spec.absolute(), a.store.absolute(), a.run_dir.absolute(), a.job_id, a.ray_address, a.cpus_per_worker,
                   tuple(a.data_root))
    try:
        return run_job(args)
    except JobInputError as e:
        emit(event("error", message=f"{len(e.problems)} problem(s) with the job's input: " + "; ".join(e.problems),
                   problems=e.problems))
        return EXIT_BAD_INPUT
    except Cancelled:
        emit(event("error", message="cancelled: the job was stopped (SIGTERM)"))
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        emit(event("error", message="cancelled: interrupted"))
        return EXIT_CANCELLED
    except Exception as e:  # TrainingFailedError and friends: one line for the server, the traceback on stderr
        import traceback

        traceback.print_exc()
        emit(event("error", message=f"adaptation failed: {type(e).__name__}: {e}"))
        return EXIT_FAILED


if __name__ == "__main__":
    from speechadapt.training.adapt import main as _main  # the importable module, so Ray pickles by reference

    sys.exit(_main())
